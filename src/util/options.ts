/** Options objects: unknown names are rejected, never ignored (a typo would silently do nothing). */
import { invalidConfig } from '../errors.js';

/**
 * Throws INVALID_CONFIG naming the first option of `options` that is not in `known`.
 * @param where The constructor or call, for the message (e.g. 'RedisStore').
 */
export function rejectUnknownOptions(where: string, options: object, known: readonly string[]): void {
  for (const name of Object.keys(options)) {
    if (!known.includes(name)) {
      throw invalidConfig(where, name, (options as Record<string, unknown>)[name], `one of the known options (${known.join(', ')})`);
    }
  }
}
