// The rate units of one bucket as slots laid end to end (BigInt, exact): the reference for
// giving units back. A charge takes the next `cost * T` of the bucket; giving it back returns
// the part of its slot still ahead of now, and every later slot moves down by that much.
// Time is counted in ticks of 1/limit µs, so that one unit is exactly `intervalUs` ticks.

export class SlotModel {
  private tat = 0n;
  private readonly slots = new Map<string, { end: bigint; cost: bigint }>();
  private readonly T: bigint;
  private readonly tau: bigint;
  constructor(
    private readonly limit: bigint,
    intervalUs: bigint,
    burst: bigint,
  ) {
    this.T = intervalUs;
    this.tau = burst * intervalUs;
  }

  private ticks(atMs: number): bigint {
    return BigInt(atMs) * 1000n * this.limit;
  }

  /** Whether `cost` units conform at `atMs`. */
  conforms(atMs: number, cost: number): boolean {
    const now = this.ticks(atMs);
    const next = (this.tat > now ? this.tat : now) + BigInt(cost) * this.T;
    return next - this.tau <= now;
  }

  /** What peek() tells at `atMs`: whole units that conform, and ms until the bucket is full (rounded up). */
  peek(atMs: number): { remaining: number; resetAfterMs: number } {
    const now = this.ticks(atMs);
    const used = this.tat > now ? this.tat - now : 0n;
    const perMs = 1000n * this.limit;
    return { remaining: Number((this.tau - used) / this.T), resetAfterMs: Number((used + perMs - 1n) / perMs) };
  }

  /** Takes `cost` units if they conform (under `id` when they may be given back); true when taken. */
  take(atMs: number, cost: number, id?: string): boolean {
    if (!this.conforms(atMs, cost)) return false;
    const now = this.ticks(atMs);
    this.tat = (this.tat > now ? this.tat : now) + BigInt(cost) * this.T;
    if (id !== undefined) this.slots.set(id, { end: this.tat, cost: BigInt(cost) });
    return true;
  }

  /** Gives back what the charge `id` still holds at `atMs`. */
  giveBack(atMs: number, id: string): void {
    const slot = this.slots.get(id);
    if (slot === undefined) return;
    this.slots.delete(id);
    const mine = slot.end - this.ticks(atMs);
    if (mine <= 0n) return;
    const back = slot.cost * this.T < mine ? slot.cost * this.T : mine;
    for (const other of this.slots.values()) if (other.end > slot.end) other.end -= back;
    this.tat -= back;
  }
}
