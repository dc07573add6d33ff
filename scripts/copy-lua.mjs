// Build step: the Redis store's Lua scripts are files of their own; copy them next to the
// compiled store (tsc copies only TypeScript output).
import { cpSync } from 'node:fs';

cpSync(new URL('../src/store/redis/lua/', import.meta.url), new URL('../dist/store/redis/lua/', import.meta.url), { recursive: true });
