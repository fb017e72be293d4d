//! Aligned text tables: the one renderer of the raftkv tools' tabular output (`raftkv
//! status`, `member list`, `endpoint ...`, `scan -o table`, the bench report).

use std::fmt::Write as _;

/// How a column's cells line up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left,
    /// Numbers, so their digits line up.
    Right,
}

/// A header and rows of cells. Columns are as wide as their widest cell and two
/// spaces apart; lines carry no trailing spaces.
#[derive(Clone, Debug)]
pub struct Table {
    header: Vec<String>,
    align: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles, every column left-aligned.
    pub fn new<S: AsRef<str>>(header: &[S]) -> Self {
        Table {
            header: header.iter().map(|h| h.as_ref().to_string()).collect(),
            align: vec![Align::Left; header.len()],
            rows: Vec::new(),
        }
    }

    /// Right-aligns the columns at these positions.
    pub fn right(mut self, columns: &[usize]) -> Self {
        for &c in columns {
            if let Some(a) = self.align.get_mut(c) {
                *a = Align::Right;
            }
        }
        self
    }

    /// Adds a row; missing cells are blank, extra ones are dropped.
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        let mut row: Vec<String> = cells.into_iter().map(Into::into).take(self.header.len()).collect();
        row.resize(self.header.len(), String::new());
        self.rows.push(row);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The aligned table, header first, one line per row.
    pub fn render(&self) -> String {
        let widths: Vec<usize> =
            (0..self.header.len()).map(|i| self.lines().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
        let mut out = String::new();
        for row in self.lines() {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let w = widths[i];
                let _ = match self.align[i] {
                    Align::Left => write!(line, "{cell:<w$}"),
                    Align::Right => write!(line, "{cell:>w$}"),
                };
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// The rows without the header, cells joined by `, `: one line per row for
    /// `grep` and `cut` (etcdctl's `simple` form).
    pub fn render_simple(&self) -> String {
        self.rows.iter().map(|r| r.join(", ") + "\n").collect()
    }

    fn lines(&self) -> impl Iterator<Item = &Vec<String>> {
        std::iter::once(&self.header).chain(&self.rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let mut t = Table::new(&["NAME", "N", "NOTE"]).right(&[1]);
        t.row(["a", "1000", "x"]);
        t.row(["long-name", "7", ""]);
        t.row(["short"]);
        assert_eq!(t.render(), "NAME          N  NOTE\na          1000  x\nlong-name     7\nshort\n");
        assert_eq!(t.render_simple(), "a, 1000, x\nlong-name, 7, \nshort, , \n");
    }

    #[test]
    fn widths_count_characters_not_bytes() {
        let mut t = Table::new(&["K", "V"]);
        t.row(["ééé", "1"]);
        t.row(["abcd", "2"]);
        assert_eq!(t.render(), "K     V\nééé   1\nabcd  2\n");
    }
}
