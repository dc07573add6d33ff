// The Fastify plugin under the shared contract: a real Fastify 5 instance.
import Fastify from 'fastify';
import { fastifyPlugin, type FastifyPluginOptions, type FastifyRequestLike, type HttpOptions } from '../src/http/index.js';
import type { Manager } from '../src/index.js';
import { describeAdapter, type Route, type Served } from './http.contract.js';

async function serve(manager: Manager, options: HttpOptions<never>, route: Route, mount = ''): Promise<Served> {
  // Tests close with clients' keep-alive sockets still open: drop them rather than wait for undici to.
  const app = Fastify({ forceCloseConnections: true });
  await app.register(
    async (scope) => {
      await scope.register(fastifyPlugin, { manager, ...(options as HttpOptions<FastifyRequestLike>) } satisfies FastifyPluginOptions);
      // request.taskvalve is typed by the plugin's augmentation of Fastify's request.
      scope.all('/*', async (request) => route({ method: request.method, path: request.url.split('?')[0] as string, admission: request.taskvalve ?? undefined }));
    },
    { prefix: mount },
  );
  const url = await app.listen({ port: 0, host: '127.0.0.1' });
  return { url, close: () => app.close() };
}

describeAdapter('Fastify', serve);
