/**
 * Numbers kept in V8's small-integer form. V8 keeps a field of an object in the object itself
 * while every value stored in it is a small integer (31 bits); once one value stored there is a
 * heap number, every object of the same shape keeps that field in a heap number of its own,
 * allocated with the object and read through a pointer. A number computed from a heap number
 * (a time from `Date.now()`, a double read from a Buffer) is a heap number even when it is an
 * integer.
 */

/** `x` as a small integer when it is an integer of 32 bits or fewer, else `x` itself. */
export function small(x: number): number {
  const i = x | 0;
  return i === x ? i : x;
}
