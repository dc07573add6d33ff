/**
 * The codes the Lua scripts answer with, defined once for TypeScript and Lua: the verdicts both
 * stores share are {@link Verdict}'s, the Redis-only ones are here, and the scripts read them
 * all from the `codes` include, written from this file when the scripts are loaded.
 */
import { Verdict } from '../store.js';

/** A subscription's status, by its code in a user's record (see user.lua). */
export const STATUS = ['active', 'canceled', 'expired'] as const;

/** An admission's user has another profile than the one the caller sent keys for: it asks again. */
export const PROFILE_MISMATCH = 9;
/** The quota alone is charged: the bucket lives in another slot (the protocol across slots). */
export const RESERVED = 10;
/** A decision's user record has a layout version these scripts do not read (see record.ts). */
export const UNKNOWN_RECORD = 11;

/** Every code of an admission record, by its name in the scripts. */
const CODES: Record<string, number> = { ...Verdict, PROFILE_MISMATCH, RESERVED, UNKNOWN_RECORD };

if (new Set(Object.values(CODES)).size !== Object.keys(CODES).length) throw new Error('two admission codes share a value');

/**
 * A script that runs past its caller's deadline (or after its process settled it) writes
 * nothing and answers an error reply that starts with this word: the call was not applied, and
 * never will be.
 */
export const LATE = 'TASKVALVE_LATE';

/**
 * A script that finds its own entry in the operation log (it ran before, and its reply was
 * lost; or settle.lua voided it) writes nothing and answers an error reply that starts with
 * this word: what became of the call is for settle.lua to say.
 */
export const DUP = 'TASKVALVE_DUP';

/** The Lua text of the `codes` include: each code as a local, and the refusals' error messages. */
export function luaCodes(): string {
  const names = Object.keys(CODES);
  return [
    `local ${names.join(', ')} = ${names.map((name) => CODES[name]).join(', ')}`,
    `local LATE = '${LATE} the call reached Redis after its deadline, or after it was settled'`,
    `local DUP = '${DUP} the call was applied or settled before'`,
    '',
  ].join('\n');
}
