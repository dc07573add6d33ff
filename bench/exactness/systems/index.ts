/** The systems compared, in the table's order: taskvalve, then its peers, then the negative control. */
import type { SystemId } from '../protocol.js';
import { bottleneck } from './bottleneck.js';
import { naive } from './naive.js';
import { rlf } from './rlf.js';
import type { System } from './system.js';
import { taskvalve } from './taskvalve.js';

// Each system's connection is of its own type; the worker only hands back what connect() gave it.
export const SYSTEMS = [taskvalve, rlf, bottleneck, naive] as unknown as readonly System<unknown>[];

export function system(id: SystemId): System<unknown> {
  const found = SYSTEMS.find((s) => s.id === id);
  if (found === undefined) throw new Error(`no system '${id}'`);
  return found;
}
