/** The Express adapter: a middleware in front of the routes that follow it. */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Manager } from '../manager.js';
import { HttpEdge, handleOnNode, type Admission, type HttpOptions } from './core.js';

declare global {
  // Express declares its Request in this global namespace for extensions to merge into; merging
  // here needs no import of Express, which stays the user's dependency.
  // eslint-disable-next-line @typescript-eslint/no-namespace
  namespace Express {
    interface Request {
      /**
       * What taskvalve's HTTP edge decided for this request: user, profile, cost, and in govern
       * mode the abort signal. Undefined before the middleware ran, and for a request `skip` passed.
       */
      taskvalve?: Admission;
    }
  }
}

/** A node:http request that passed the middleware (Express's own `Request` is augmented with `taskvalve`). */
export type AdmittedRequest = IncomingMessage & {
  /** The request's admission; undefined before the middleware ran, or when `skip` passed it. */
  taskvalve?: Admission;
};

/** What Express calls a middleware (typed on node:http so that Express stays the user's dependency). */
export type ExpressMiddleware<Req extends IncomingMessage = IncomingMessage> = (req: Req, res: ServerResponse, next: (error?: unknown) => void) => void;

/**
 * `app.use(expressMiddleware(manager, options))`: admitted requests go on to the next route with
 * the RateLimit headers set and `req.taskvalve` filled in; refused ones are answered here with
 * problem+json. In govern mode the rest of the chain runs inside the task, which holds its slot
 * until the response is sent or the connection closes.
 */
export function expressMiddleware<Req extends IncomingMessage = IncomingMessage>(manager: Manager, options: HttpOptions<Req>): ExpressMiddleware<Req> {
  const edge = new HttpEdge<Req>(manager, options);
  return (req, res, next) => {
    void handleOnNode(edge, req, res, (admission) => {
      (req as AdmittedRequest).taskvalve = admission;
      next();
    });
  };
}
