// The suites `npm run mutate` runs against each mutant: the embedded pipeline's and the GCRA's
// (the Redis and HTTP suites exercise other modules and would only slow every mutant down).
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: [
      'test/scenarios.test.ts',
      'test/validation.test.ts',
      'test/metrics.test.ts',
      'test/gcra.test.ts',
      'test/refund-property.test.ts',
      'test/task-edges.test.ts',
      'test/refund-log.test.ts',
      'test/rate-line-edges.test.ts',
      'test/pipeline-edges.test.ts',
      'test/memory-store-edges.test.ts',
      'test/store-memory.test.ts',
      'test/lifecycle*.test.ts',
      'test/edges*.test.ts',
      'test/worker.test.ts',
      'test/settlement.test.ts',
      'test/delete-subscription.test.ts',
      'test/sweep.test.ts',
    ],
    pool: 'forks',
    testTimeout: 30_000,
    hookTimeout: 30_000,
  },
});
