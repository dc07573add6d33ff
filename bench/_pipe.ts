import { pipeline } from './pipeline.js';
const rows = await pipeline((l) => console.error(l));
console.log(JSON.stringify(rows, null, 1));
