/** Options objects: unknown names are rejected, never ignored (a typo would silently do nothing). */
import { invalidConfig, type TaskvalveError } from '../errors.js';

/** Names of `options` that are not in `known`; empty when all are known. */
export function unknownKeys(options: object, known: readonly string[]): string[] {
  const out: string[] = [];
  for (const key in options) if (!known.includes(key)) out.push(key);
  return out;
}

/**
 * Throws INVALID_CONFIG naming the first option of `options` that is not in `known` (for
 * constructors; calls reject with `unknownOptions`, an INVALID_ARGUMENT).
 * @param where The constructor or call, for the message (e.g. 'RedisStore').
 */
export function rejectUnknownOptions(where: string, options: object, known: readonly string[]): void {
  const [name] = unknownKeys(options, known);
  if (name !== undefined) {
    throw invalidConfig(where, name, (options as Record<string, unknown>)[name], `one of the known options (${known.join(', ')})`);
  }
}

/**
 * The known options of `options`, read once into a plain object (unknown names listed in
 * `unknown`). A getter that throws, or a Proxy, fails with `fail(error)`, never with its own
 * error; and each option is read once, so a getter cannot answer one value to the checks and
 * another to the use.
 */
export function readOptions<T extends object>(options: T, known: readonly string[], fail: (error: unknown) => TaskvalveError): { values: T; unknown: string[] } {
  try {
    const values: Record<string, unknown> = {};
    for (const key of known) {
      const value = (options as Record<string, unknown>)[key];
      if (value !== undefined) values[key] = value;
    }
    return { values: values as T, unknown: unknownKeys(options, known) };
  } catch (error) {
    throw fail(error);
  }
}
