/** A binary min-heap: items ordered by a number each one carries (read when it is pushed and moved). */
export class Heap<T> {
  private readonly items: T[] = [];

  /** @param key The number an item is ordered by; it must not change while the item is held. */
  constructor(private readonly key: (item: T) => number) {}

  get size(): number {
    return this.items.length;
  }

  /** The item with the smallest key, left in place. */
  peek(): T | undefined {
    return this.items[0];
  }

  push(item: T): void {
    const items = this.items;
    const k = this.key(item);
    let i = items.length;
    items.push(item);
    while (i > 0) {
      const parent = (i - 1) >> 1;
      const above = items[parent] as T;
      if (this.key(above) <= k) break;
      items[i] = above;
      i = parent;
    }
    items[i] = item;
  }

  /** Takes out the item with the smallest key. */
  pop(): T | undefined {
    const items = this.items;
    const top = items[0];
    const last = items.pop();
    if (items.length === 0 || last === undefined) return top;
    const k = this.key(last);
    const n = items.length;
    let i = 0;
    for (;;) {
      let child = 2 * i + 1;
      if (child >= n) break;
      if (child + 1 < n && this.key(items[child + 1] as T) < this.key(items[child] as T)) child++;
      const below = items[child] as T;
      if (this.key(below) >= k) break;
      items[i] = below;
      i = child;
    }
    items[i] = last;
    return top;
  }
}
