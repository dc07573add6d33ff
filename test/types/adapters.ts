// Compiled by test/types.test.ts (tsc, no emit): the adapters' request decorations are typed by
// module augmentation, on real Express 5 and Fastify 5 types. Each @ts-expect-error must error.
import express from 'express';
import Fastify from 'fastify';
import { expressMiddleware, fastifyPlugin, type Admission } from '../../src/http/index.js';
import { Manager } from '../../src/index.js';

const manager = new Manager();

const app = express();
// A tenant function gets Express's own Request.
app.use(expressMiddleware(manager, { tenant: (req: express.Request) => req.get('x-user'), skip: (req) => req.method === 'OPTIONS' }));
app.get('/', (req, res) => {
  const admission: Admission | undefined = req.taskvalve;
  const user: string | undefined = req.taskvalve?.userId;
  const cost: number | undefined = req.taskvalve?.cost;
  // @ts-expect-error: typed, not any
  void req.taskvalve?.nope;
  // @ts-expect-error: undefined when the middleware has not run, or skip passed the request
  void req.taskvalve.userId;
  res.send({ admission, user, cost });
});

const fastify = Fastify();
await fastify.register(fastifyPlugin, { manager, tenant: 'ip' });
fastify.get('/', async (request) => {
  const admission: Admission | null = request.taskvalve;
  const signal: AbortSignal | undefined = request.taskvalve?.signal;
  // @ts-expect-error: typed, not any
  void request.taskvalve?.nope;
  // @ts-expect-error: null before the hook ran, or when skip passed the request
  void request.taskvalve.userId;
  return { user: admission?.userId, aborted: signal?.aborted };
});
