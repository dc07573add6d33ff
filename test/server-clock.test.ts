// The bound on a Redis server's clock that every deadline is computed from (deadlines: a script
// that runs past its call's deadline writes nothing). A deadline must never lie after the server
// time at which the client gives up on the call, whatever the network and the event loop did to
// the readings it learned from; and a prompt reading must make it tight, so that calls are not
// refused while there is time left.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ServerClock, WINDOW_MS } from '../src/store/redis/server-clock.js';

/** One `TIME` reading: sent at `at` µs (local), the server reads its clock `out` µs later, the reply is read `back` µs after that. */
const reading = fc.record({ gapUs: fc.integer({ min: 0, max: 30_000_000 }), out: fc.integer({ min: 0, max: 5_000_000 }), back: fc.integer({ min: 0, max: 5_000_000 }) });

describe('the server clock bound', () => {
  it('never gives a deadline past the server time at which the client gives up, however late readings were read', () => {
    fc.assert(
      fc.property(fc.integer({ min: -1e15, max: 2e15 }), fc.array(reading, { minLength: 1, maxLength: 30 }), fc.integer({ min: 1, max: 60_000 }), (offset, readings, timeoutMs) => {
        const clock = new ServerClock();
        let now = 1_000_000;
        for (const r of readings) {
          now += r.gapUs;
          clock.sample(now, now + r.out + r.back, now + r.out + offset);
          now += r.out + r.back;
          // A call sent now is given up on at now + timeout (local), server time now + timeout + offset.
          expect(clock.deadline(now, timeoutMs)).toBeLessThanOrEqual(now + timeoutMs * 1000 + offset);
        }
      }),
    );
  });

  it('is as tight as the most prompt reading of the last window: a reading read late does not spoil it', () => {
    fc.assert(
      fc.property(fc.integer({ min: -1e15, max: 2e15 }), fc.integer({ min: 0, max: 2000 }), fc.array(fc.integer({ min: 0, max: 10_000_000 }), { maxLength: 10 }), (offset, rtt, lags) => {
        const clock = new ServerClock();
        const start = 5_000_000;
        clock.sample(start, start + rtt, start + rtt + offset);
        let now = start + rtt;
        // Readings read late by up to 10 s (a busy event loop), within the same window.
        for (const lag of lags) {
          now += 1000;
          clock.sample(now, now + lag, now + offset);
        }
        expect(clock.offset()).toBeGreaterThanOrEqual(offset - rtt);
        expect(clock.offset()).toBeLessThanOrEqual(offset);
      }),
    );
  });

  it('follows a server clock that steps back within two windows, and forgets everything on reset', () => {
    const clock = new ServerClock();
    clock.sample(0, 100, 50 + 1e12);
    expect(clock.offset()).toBe(1e12 - 50);
    // The server's clock steps back by a second: readings in later windows say so.
    const later = 1e12 - 1e6;
    clock.sample(WINDOW_MS * 1000, WINDOW_MS * 1000 + 100, WINDOW_MS * 1000 + 50 + later);
    expect(clock.offset()).toBe(1e12 - 50); // the previous window still counts
    clock.sample(2 * WINDOW_MS * 1000, 2 * WINDOW_MS * 1000 + 100, 2 * WINDOW_MS * 1000 + 50 + later);
    expect(clock.offset()).toBe(later - 50);
    clock.reset();
    expect(clock.known).toBe(false);
  });
});
