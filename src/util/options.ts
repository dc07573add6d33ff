/** Options objects: unknown names are rejected, never ignored (a typo would silently do nothing). */
import { invalidConfig } from '../errors.js';

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
