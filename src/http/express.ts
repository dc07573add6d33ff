/** The Express adapter: a middleware in front of the routes that follow it. */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Manager } from '../manager.js';
import { HttpEdge, handleOnNode, type Admission, type HttpOptions } from './core.js';

/** A request that passed the middleware: `req.taskvalve` tells its admission. */
export type AdmittedRequest = IncomingMessage & {
  /** The request's admission; undefined before the middleware ran. */
  taskvalve?: Admission;
};

/** What Express calls a middleware (typed on node:http so that Express stays the user's dependency). */
export type ExpressMiddleware = (req: IncomingMessage, res: ServerResponse, next: (error?: unknown) => void) => void;

/**
 * `app.use(expressMiddleware(manager, options))`: admitted requests go on to the next route with
 * the RateLimit headers set and `req.taskvalve` filled in; refused ones are answered here with
 * problem+json. In govern mode the rest of the chain runs inside the task, which holds its slot
 * until the response is sent or the connection closes.
 */
export function expressMiddleware(manager: Manager, options: HttpOptions<IncomingMessage>): ExpressMiddleware {
  const edge = new HttpEdge<IncomingMessage>(manager, options);
  return (req, res, next) => {
    void handleOnNode(edge, req, res, (admission) => {
      (req as AdmittedRequest).taskvalve = admission;
      next();
    });
  };
}
