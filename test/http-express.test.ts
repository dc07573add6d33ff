// The Express adapter under the shared contract: a real Express 5 app.
import express from 'express';
import { expressMiddleware, type HttpOptions } from '../src/http/index.js';
import type { Manager } from '../src/index.js';
import { describeAdapter, listen, type Route, type Served } from './http.contract.js';

async function serve(manager: Manager, options: HttpOptions<never>, route: Route, mount = '/'): Promise<Served> {
  const app = express();
  app.use(mount, expressMiddleware(manager, options as HttpOptions<express.Request>));
  app.use(mount, async (req, res) => {
    // req.taskvalve is typed by the adapter's augmentation of Express's Request.
    res.send(await route({ method: req.method, path: req.originalUrl.split('?')[0] as string, admission: req.taskvalve }));
  });
  return listen(app.listen(0, '127.0.0.1'));
}

describeAdapter('Express', serve);
