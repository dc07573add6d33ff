/**
 * A user's record in Redis is versioned: its first byte is its layout's version (see
 * `lua/includes/user.lua`). A record of a version these scripts do not know (written by
 * another version of taskvalve, or by something else using the prefix) is never read as one
 * they know: the call fails with INVALID_CONFIG, naming the key and the version found. It is
 * not an outage, so no outage policy admits in its place.
 */
import { ErrorCode, TaskvalveError } from '../../errors.js';

/** The error for the record at `key`, of layout version `found` (-1: empty), where `reads` is the version the scripts read. */
export function unknownRecord(key: string, found: number | string, reads: number | string): TaskvalveError {
  return new TaskvalveError(
    ErrorCode.INVALID_CONFIG,
    `the record ${key} in Redis has layout version ${found}, and this version of taskvalve reads version ${reads}: it was written by another version of taskvalve, or by something else using this prefix`,
    { retryable: false },
  );
}

/** The text a script fails with on such a record (user.lua's user_unknown). */
const SCRIPT_ERROR = /TASKVALVE_RECORD (.*) has layout version (\S+); this code reads version (\d+)/;

/** A script's failure on a record of another layout version, as its TaskvalveError; undefined for any other failure. */
export function recordError(error: unknown): TaskvalveError | undefined {
  const match = error instanceof Error ? SCRIPT_ERROR.exec(error.message) : null;
  return match === null ? undefined : unknownRecord(match[1] as string, match[2] as string, match[3] as string);
}
