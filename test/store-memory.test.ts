// The Store contract on the MemoryStore.
import { MemoryStore } from '../src/index.js';
import { storeContract } from './store.contract.js';

storeContract('MemoryStore', { make: async () => new MemoryStore() });
