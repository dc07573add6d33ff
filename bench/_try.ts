import { decisions } from './decisions.ts';
import { renderTable } from './lib/table.ts';
const t0 = Date.now();
const rows = await decisions((l) => console.error(l));
console.log(renderTable(rows));
console.log((Date.now() - t0) / 1000, 's');
