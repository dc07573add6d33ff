/**
 * Calls that gather behind the one in flight: the first item of a quiet moment goes at once,
 * alone; items that arrive while a call is in flight wait for it and go together in the next
 * call, up to a maximum. Under load, many items share one round trip and one script run; when
 * calls are few, nothing waits.
 */

/** Items bound for one call, each with its caller's promise. */
interface Pending<T, R> {
  items: T[];
  settles: { resolve(result: R): void; reject(error: unknown): void }[];
}

/** One destination's call in flight and the items gathering behind it. */
interface Lane<T, R> {
  /** Calls in flight (one, or more when items filled a call while one was in flight). */
  inFlight: number;
  next: Pending<T, R> | undefined;
}

export class Gather<K, T, R> {
  private readonly lanes = new Map<K, Lane<T, R>>();

  /**
   * `call`: sends the items of one destination in one call and answers one result per item (in
   * order), or rejects for all of them. `max`: items per call at most.
   */
  constructor(
    private readonly call: (key: K, items: T[]) => Promise<R[]>,
    private readonly max = 64,
  ) {}

  /** Queues an item for its destination's next call; resolves with its own result. */
  add(key: K, item: T): Promise<R> {
    let lane = this.lanes.get(key);
    if (lane === undefined) {
      lane = { inFlight: 0, next: undefined };
      this.lanes.set(key, lane);
    }
    let pending = lane.next;
    if (pending === undefined) {
      pending = { items: [], settles: [] };
      lane.next = pending;
    }
    const gathering = pending;
    const result = new Promise<R>((resolve, reject) => {
      gathering.items.push(item);
      gathering.settles.push({ resolve, reject });
    });
    if (lane.inFlight === 0 || gathering.items.length >= this.max) this.send(key, lane);
    return result;
  }

  /** Sends what gathered for a destination; when the call returns, what gathered meanwhile goes. */
  private send(key: K, lane: Lane<T, R>): void {
    const pending = lane.next;
    if (pending === undefined) return;
    lane.next = undefined;
    lane.inFlight++;
    const done = (): void => {
      lane.inFlight--;
      if (lane.inFlight > 0) return;
      if (lane.next !== undefined) this.send(key, lane);
      else this.lanes.delete(key);
    };
    let sent: Promise<R[]>;
    try {
      sent = this.call(key, pending.items);
    } catch (error) {
      sent = Promise.reject(error);
    }
    sent.then(
      (results) => {
        done();
        pending.settles.forEach((s, i) => s.resolve(results[i] as R));
      },
      (error: unknown) => {
        done();
        for (const s of pending.settles) s.reject(error);
      },
    );
  }
}
