// A token bucket in exact integers (BigInt): a different formulation of the GCRA contract, the
// reference the property tests hold the limiter against.

export class ModelBucket {
  private tokens: bigint; // units * intervalUs
  private last = 0n;
  constructor(
    private readonly limit: bigint,
    private readonly intervalUs: bigint,
    private readonly burst: bigint,
  ) {
    this.tokens = burst * intervalUs;
  }

  private refill(atMs: number): void {
    this.refillUs(BigInt(atMs) * 1000n);
  }

  private refillUs(at: bigint): void {
    const cap = this.burst * this.intervalUs;
    const refill = this.tokens + (at - this.last) * this.limit;
    this.tokens = refill > cap ? cap : refill;
    this.last = at;
  }

  /** Whether `cost` units conform at `atMs` (ms from the start); changes nothing but the refill. */
  allows(atMs: number, cost: number): boolean {
    this.refill(atMs);
    return this.tokens >= BigInt(cost) * this.intervalUs;
  }

  /** Takes `cost` units if they conform; true when taken. */
  take(atMs: number, cost: number): boolean {
    if (!this.allows(atMs, cost)) return false;
    this.tokens -= BigInt(cost) * this.intervalUs;
    return true;
  }

  /** {@link ModelBucket.take} at `atUs`, whole µs from the start. */
  takeUs(atUs: number, cost: number): boolean {
    this.refillUs(BigInt(atUs));
    if (this.tokens < BigInt(cost) * this.intervalUs) return false;
    this.tokens -= BigInt(cost) * this.intervalUs;
    return true;
  }
}
