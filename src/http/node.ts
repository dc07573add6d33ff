/** The node:http adapter: wraps a request handler so that it runs only for admitted requests. */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { invalidConfig } from '../errors.js';
import type { Manager } from '../manager.js';
import { HttpEdge, handleOnNode, type Admission, type HttpOptions } from './core.js';

/**
 * A node:http handler that also learns its admission (user, cost, and in govern mode the abort
 * signal); undefined for a request that the `skip` option passed through.
 */
export type NodeHandler = (req: IncomingMessage, res: ServerResponse, admission: Admission | undefined) => unknown;

/**
 * `http.createServer(nodeHandler(manager, options, handler))`: admitted requests reach `handler`
 * with the RateLimit headers already set; refused ones get a problem+json answer. A handler's
 * throw or rejection becomes a 500 without its message (or a cut connection once it had begun
 * answering); in govern mode the task lasts until the handler has settled and the response is over.
 */
export function nodeHandler(manager: Manager, options: HttpOptions<IncomingMessage>, handler: NodeHandler): (req: IncomingMessage, res: ServerResponse) => void {
  if (typeof handler !== 'function') throw invalidConfig('nodeHandler', 'handler', handler, 'a function (req, res, admission)');
  const edge = new HttpEdge<IncomingMessage>(manager, options);
  return (req, res) => {
    void handleOnNode(edge, req, res, (admission) => handler(req, res, admission));
  };
}
