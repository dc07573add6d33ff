// The Express adapter under the shared contract: a real Express 5 app.
import express from 'express';
import type { IncomingMessage } from 'node:http';
import { expressMiddleware, type AdmittedRequest, type HttpOptions } from '../src/http/index.js';
import type { Manager } from '../src/index.js';
import { describeAdapter, listen, type Route, type Served } from './http.contract.js';

async function serve(manager: Manager, options: HttpOptions<never>, route: Route): Promise<Served> {
  const app = express();
  app.use(expressMiddleware(manager, options as HttpOptions<IncomingMessage>));
  app.use(async (req, res) => {
    res.send(await route({ method: req.method, path: req.path, admission: (req as AdmittedRequest).taskvalve }));
  });
  return listen(app.listen(0, '127.0.0.1'));
}

describeAdapter('Express', serve);
