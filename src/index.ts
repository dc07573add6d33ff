/**
 * taskvalve: govern work in multi-tenant backends. `import { Manager } from 'taskvalve'`. See docs/ for the reference.
 * @module taskvalve
 */
export { Manager, DeadLetterQueue } from './manager.js';
export type { ManagerOptions, SubscribeOptions, SubscriptionEvent, Logger, ProfileView, CloseOptions, ManagerEvents } from './manager.js';
export { Limiter } from './limiter.js';
export type { Task, SubmitOptions, Decision, DetailedDecision, PeekResult } from './task/admission.js';
export type { CloseReport } from './task/pipeline.js';
export type { TaskEvent, StateName } from './task/lifecycle.js';
export { MemoryStore } from './store/memory.js';
export { RedisStore } from './store/redis/index.js';
export type { RedisStoreOptions, RedisClientLike } from './store/redis/index.js';
export type { MemoryStoreOptions } from './store/memory.js';
export type { Store, Subscription, SubscriptionStatus, FailedTask, DlqQuery, DeadTask, EndedUser, SweepResult, RateReceipt, TurnRequest, TurnsTaken } from './store/store.js';
export { TaskvalveError, ErrorCode } from './errors.js';
export type { TaskvalveErrorDetails, Refusal } from './errors.js';
export type { ProfileConfig, RateConfig, PoolConfig, QuotaConfig, RetryConfig, DlqConfig } from './profile.js';
export type { InlineTask, TaskContext } from './task/job.js';
