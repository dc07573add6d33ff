/**
 * The MemoryStore's dead-letter queue. Adding an entry and listing with a limit cost the same
 * with 100,000 entries as with 100: entries sit in a Map by id, in arrival order globally and
 * per profile (queues that only grow at the back and shrink at the front), with a count per
 * profile, and per user (a set of ids, so that one user's list reads only theirs). Bounds and retention remove from the oldest end of the entry's profile; an
 * entry past its retention is never returned (each read checks it). The queues hold the letters
 * themselves: a removed letter stays in them until it reaches the front (the queues are rebuilt
 * when such letters outnumber the live ones), and a letter put back (a refused replay) is a new
 * one, so the place of the old one is never taken for it.
 */
import { Deque } from '../util/deque.js';
import type { DlqQuery, FailedTask } from './store.js';

/** A stored entry and when it expires (ms). */
interface Letter {
  entry: FailedTask;
  expiresAt: number;
}

/** One profile's entries: its letters oldest first (some possibly removed), and how many are live. */
interface ProfileLetters {
  ids: Deque<Letter>;
  count: number;
}

/** Removed letters a queue may hold beyond its live ones before it is rebuilt. */
const SLACK = 1024;

/** The MemoryStore's dead letters, bounded per profile, by retention and by a cap on them all. */
export class DeadLetters {
  private readonly letters = new Map<string, Letter>();
  private order = new Deque<Letter>();
  private readonly profiles = new Map<string, ProfileLetters>();
  /** Each user's entry ids, oldest first (a Set keeps insertion order): one user's list walks only theirs. */
  private readonly users = new Map<string, Set<string>>();

  /** @param cap Entries kept at most across all profiles (the oldest go first). */
  constructor(private readonly cap: number) {}

  add(entry: FailedTask, bounds: { maxEntries: number; retentionMs: number }, nowMs: number): void {
    // An entry added again (put back after a refused replay) replaces its earlier letter.
    this.delete(entry.id);
    const profile = this.profileOf(entry.profileName);
    const letter: Letter = { entry, expiresAt: entry.lastFailedAt.getTime() + bounds.retentionMs };
    this.letters.set(entry.id, letter);
    let mine = this.users.get(entry.userId);
    if (mine === undefined) {
      mine = new Set();
      this.users.set(entry.userId, mine);
    }
    mine.add(entry.id);
    this.order.push(letter);
    profile.ids.push(letter);
    profile.count++;
    // Retention, then the profile's bound, then the store's: always from the oldest end.
    for (let l = this.front(profile.ids); l !== undefined && l.expiresAt <= nowMs; l = this.front(profile.ids)) this.delete(l.entry.id);
    while (profile.count > bounds.maxEntries) this.delete((this.front(profile.ids) as Letter).entry.id);
    while (this.letters.size > this.cap) this.delete((this.front(this.order) as Letter).entry.id);
    this.compact(profile);
  }

  /** Oldest first: the profile's queue when the query names one, else all entries. */
  list(query: DlqQuery, nowMs: number): FailedTask[] {
    const out: FailedTask[] = [];
    const limit = query.limit ?? Infinity;
    if (limit <= 0) return out;
    const expired: string[] = [];
    for (const letter of this.walk(query)) {
      if (letter === undefined || !this.live(letter)) continue;
      if (letter.expiresAt <= nowMs) {
        expired.push(letter.entry.id);
        continue;
      }
      if (query.profileName !== undefined && letter.entry.profileName !== query.profileName) continue;
      out.push(letter.entry);
      if (out.length >= limit) break;
    }
    for (const id of expired) this.delete(id);
    return out;
  }

  get(id: string, nowMs: number): FailedTask | undefined {
    const letter = this.letters.get(id);
    if (letter === undefined) return undefined;
    if (letter.expiresAt <= nowMs) {
      this.delete(id);
      return undefined;
    }
    return letter.entry;
  }

  remove(id: string): boolean {
    if (!this.letters.has(id)) return false;
    this.delete(id);
    return true;
  }

  /** The letters a list reads, oldest first: one user's, else one profile's, else all. */
  private walk(query: DlqQuery): Iterable<Letter | undefined> {
    if (query.userId !== undefined) {
      const ids = this.users.get(query.userId);
      if (ids === undefined) return [];
      const letters = this.letters;
      return (function* () {
        for (const id of ids) yield letters.get(id);
      })();
    }
    if (query.profileName !== undefined) return this.profiles.get(query.profileName)?.ids ?? [];
    return this.order;
  }

  /** Removes every entry of a user (their subscription was deleted). */
  forget(userId: string): void {
    const ids = this.users.get(userId);
    if (ids === undefined) return;
    for (const id of [...ids]) this.delete(id);
  }

  private profileOf(name: string): ProfileLetters {
    let profile = this.profiles.get(name);
    if (profile === undefined) {
      profile = { ids: new Deque<Letter>(), count: 0 };
      this.profiles.set(name, profile);
    }
    return profile;
  }

  /** Whether a letter of a queue is the one stored now under its id (not removed, not replaced). */
  private live(letter: Letter): boolean {
    return this.letters.get(letter.entry.id) === letter;
  }

  /** The oldest live letter of a queue, dropping removed ones from its front. */
  private front(ids: Deque<Letter>): Letter | undefined {
    let letter = ids.peek();
    while (letter !== undefined && !this.live(letter)) {
      ids.shift();
      letter = ids.peek();
    }
    return letter;
  }

  private delete(id: string): void {
    const letter = this.letters.get(id);
    if (letter === undefined) return;
    this.letters.delete(id);
    const mine = this.users.get(letter.entry.userId) as Set<string>;
    mine.delete(id);
    if (mine.size === 0) this.users.delete(letter.entry.userId);
    const profile = this.profiles.get(letter.entry.profileName) as ProfileLetters;
    profile.count--;
    if (profile.count === 0 && this.front(profile.ids) === undefined) this.profiles.delete(letter.entry.profileName);
  }

  /** Rebuilds queues whose removed ids outnumber their live ones (amortised O(1) per add). */
  private compact(profile: ProfileLetters): void {
    const live = (ids: Deque<Letter>): Deque<Letter> => {
      const kept = new Deque<Letter>();
      for (const letter of ids) if (this.live(letter)) kept.push(letter);
      return kept;
    };
    if (this.order.length > 2 * this.letters.size + SLACK) this.order = live(this.order);
    if (profile.ids.length > 2 * profile.count + SLACK) profile.ids = live(profile.ids);
  }
}
