/** The Fastify plugin: an onRequest hook over the whole instance (not encapsulated). */
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';
import type { Manager } from '../manager.js';
import { HttpEdge, type Admission, type HttpOptions } from './core.js';

// Fastify is the user's dependency: where it is not installed, this augmentation has nothing to
// merge into, and it must not fail a consumer's typecheck (skipLibCheck or not). The directive is
// a block comment so that it stays in the emitted .d.ts.
/** @ts-ignore TS2664: module 'fastify' cannot be found without Fastify */
declare module 'fastify' {
  interface FastifyRequest {
    /**
     * What taskvalve's HTTP edge decided for this request: user, profile, cost, and in govern
     * mode the abort signal. Null before the plugin's hook ran, and for a request `skip` passed.
     */
    taskvalve: Admission | null;
  }
}

/** The parts of a Fastify request the plugin uses (typed structurally so that Fastify stays the user's dependency). */
export interface FastifyRequestLike {
  /** The node:http request under it. */
  readonly raw: IncomingMessage;
  /** Its headers. */
  readonly headers: IncomingHttpHeaders;
  /** Set by the plugin on admitted requests. */
  taskvalve?: Admission | null;
}

/** The parts of a Fastify reply the plugin uses. */
export interface FastifyReplyLike {
  /** The node:http response under it. */
  readonly raw: ServerResponse;
  /** Sets the status. */
  code(status: number): unknown;
  /** Sets a header. */
  header(name: string, value: string): unknown;
  /** Sends the body. */
  send(payload?: unknown): unknown;
  /** Takes the response out of Fastify's hands. */
  hijack(): unknown;
}

/** The parts of a Fastify instance the plugin uses. */
export interface FastifyInstanceLike {
  /** Declares a request property. */
  decorateRequest(name: string, value: null): unknown;
  /** Adds a lifecycle hook. */
  addHook(name: 'onRequest', hook: (request: FastifyRequestLike, reply: FastifyReplyLike, done: (error?: Error) => void) => void): unknown;
}

/** Options of {@link fastifyPlugin}: the manager and the HTTP edge's options. */
export interface FastifyPluginOptions extends HttpOptions<FastifyRequestLike> {
  /** The manager whose limiters decide. */
  manager: Manager;
}

/** What Fastify itself puts into a plugin's options. */
const FASTIFY_KEYS = new Set(['prefix', 'logLevel', 'logSerializers']);

function plugin(instance: FastifyInstanceLike, opts: FastifyPluginOptions, done: (error?: Error) => void): void {
  let edge: HttpEdge<FastifyRequestLike>;
  try {
    const { manager, ...rest } = opts;
    const options = Object.fromEntries(Object.entries(rest).filter(([key]) => !FASTIFY_KEYS.has(key))) as unknown as HttpOptions<FastifyRequestLike>;
    edge = new HttpEdge<FastifyRequestLike>(manager, options);
  } catch (error) {
    done(error as Error);
    return;
  }
  instance.decorateRequest('taskvalve', null);
  instance.addHook('onRequest', (request, reply, next) => {
    void edge.handle(
      request.raw,
      request,
      reply.raw,
      (headers, admission) => {
        for (const [name, value] of headers) reply.header(name, value);
        request.taskvalve = admission ?? null;
        next();
      },
      (denial) => {
        if (denial.body === undefined) {
          // The client is gone: tell Fastify the response is handled, and drop the connection.
          reply.hijack();
          reply.raw.destroy();
          return;
        }
        reply.code(denial.status);
        for (const [name, value] of denial.headers) reply.header(name, value);
        // A Buffer: Fastify would append '; charset=utf-8' to a string's media type.
        reply.send(Buffer.from(denial.body));
      },
    );
  });
  done();
}

/**
 * `fastify.register(fastifyPlugin, { manager, ...options })`: admitted requests go on with the
 * RateLimit headers set and `request.taskvalve` filled in; refused ones are answered in the
 * onRequest hook with problem+json. The hook applies to the whole instance (the plugin skips
 * Fastify's encapsulation, as fastify-plugin would). In govern mode the handler runs inside the
 * task, which holds its slot until the response is sent or the connection closes.
 */
export const fastifyPlugin = Object.assign(plugin, {
  [Symbol.for('skip-override')]: true,
  [Symbol.for('fastify.display-name')]: 'taskvalve',
});
