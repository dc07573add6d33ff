/**
 * The MemoryStore's index of subscription ends: a binary min-heap of (end, user id) in two
 * parallel arrays (numbers and strings, no object per entry). Entries are never updated in
 * place: a new end adds an entry, and the store checks each entry it takes against the
 * user's record, dropping those a later change made stale.
 */
export class EndedIndex {
  private readonly ends: number[] = [];
  private readonly users: string[] = [];

  get size(): number {
    return this.ends.length;
  }

  /** Records that `userId` ends (or ended) at `end`. */
  add(end: number, userId: string): void {
    const ends = this.ends;
    const users = this.users;
    let i = ends.length;
    ends.push(end);
    users.push(userId);
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if ((ends[parent] as number) <= end) break;
      ends[i] = ends[parent] as number;
      users[i] = users[parent] as string;
      i = parent;
    }
    ends[i] = end;
    users[i] = userId;
  }

  /** The earliest end, or Infinity when empty. */
  peek(): number {
    return this.ends.length === 0 ? Infinity : (this.ends[0] as number);
  }

  /** Removes the entry with the earliest end and returns its user. */
  take(): string {
    const ends = this.ends;
    const users = this.users;
    const top = users[0] as string;
    const lastEnd = ends.pop() as number;
    const lastUser = users.pop() as string;
    const n = ends.length;
    if (n > 0) {
      let i = 0;
      for (;;) {
        let child = 2 * i + 1;
        if (child >= n) break;
        if (child + 1 < n && (ends[child + 1] as number) < (ends[child] as number)) child++;
        if ((ends[child] as number) >= lastEnd) break;
        ends[i] = ends[child] as number;
        users[i] = users[child] as string;
        i = child;
      }
      ends[i] = lastEnd;
      users[i] = lastUser;
    }
    return top;
  }
}
