/** The result table: one row per measure, rendered as GitHub markdown. */

export interface Row {
  measure: string;
  /** taskvalve's figure, formatted (empty on a heading row). */
  taskvalve: string;
  /** The reference's name and figure, formatted. */
  reference: string;
  /** taskvalve / reference (undefined: not a ratio measure). */
  ratio?: number;
  /** The target as text, e.g. '≥ 0.60' (undefined: informative row). */
  target?: string;
  /** Whether the target is met (undefined: informative row). */
  met?: boolean;
  /** A bold heading row that groups the rows below it. */
  heading?: boolean;
}

/** A heading row. */
export function heading(title: string): Row {
  return { measure: `**${title}**`, taskvalve: '', reference: '', heading: true };
}

/** A row whose ratio must be at least `min`. */
export function atLeast(row: Omit<Row, 'target' | 'met'> & { ratio: number }, min: number): Row {
  return { ...row, target: `≥ ${min.toFixed(2)}`, met: row.ratio >= min };
}

export function renderTable(rows: readonly Row[]): string {
  const head = ['measure', 'taskvalve', 'reference', 'ratio', 'target', 'met?'];
  const body = rows.map((r) =>
    r.heading
      ? [r.measure, '', '', '', '', '']
      : [
          r.measure,
          r.taskvalve,
          r.reference,
          r.ratio === undefined ? '—' : r.ratio.toFixed(2),
          r.target ?? '—',
          r.met === undefined ? '—' : r.met ? 'yes' : '**no**',
        ],
  );
  const line = (cells: readonly string[]): string => `| ${cells.join(' | ')} |`;
  return [line(head), line(head.map((_, i) => (i === 0 || i === 2 ? ':---' : '---:'))), ...body.map(line)].join('\n');
}
