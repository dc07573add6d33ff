/**
 * taskvalve/http: admission at the HTTP edge, one core with node:http, Express and Fastify
 * adapters. `import { expressMiddleware } from 'taskvalve/http'`.
 * @module taskvalve/http
 */
export { nodeHandler } from './node.js';
export type { NodeHandler } from './node.js';
export { expressMiddleware } from './express.js';
export type { AdmittedRequest, ExpressMiddleware } from './express.js';
export { fastifyPlugin } from './fastify.js';
export type { FastifyPluginOptions, FastifyRequestLike, FastifyReplyLike, FastifyInstanceLike } from './fastify.js';
export { HttpEdge, handleOnNode, writeDenial } from './core.js';
export type { HttpOptions, Admission, Proceed } from './core.js';
export type { CostRule } from './costs.js';
export type { TenantOption, MaybeUserId } from './tenant.js';
export type { Header } from './headers.js';
export { QUOTA_EXCEEDED_TYPE, PROBLEM_TYPE_PREFIX } from './problem.js';
export type { Denial } from './problem.js';
