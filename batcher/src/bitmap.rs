//! A fixed-size bitmap over the rows of a batch.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitmap {
    words: Vec<u64>,
    len: usize,
}

impl Bitmap {
    pub fn zeros(len: usize) -> Self {
        Self {
            words: vec![0; len.div_ceil(64)],
            len,
        }
    }

    pub fn ones(len: usize) -> Self {
        let mut b = Self {
            words: vec![u64::MAX; len.div_ceil(64)],
            len,
        };
        b.clear_tail();
        b
    }

    /// Builds a bitmap from a per-row predicate, 64 rows per word.
    pub fn from_fn(len: usize, mut f: impl FnMut(usize) -> bool) -> Self {
        let mut words = vec![0u64; len.div_ceil(64)];
        for (w, word) in words.iter_mut().enumerate() {
            let base = w * 64;
            let end = (base + 64).min(len);
            let mut acc = 0u64;
            for row in base..end {
                acc |= u64::from(f(row)) << (row - base);
            }
            *word = acc;
        }
        Self { words, len }
    }

    fn clear_tail(&mut self) {
        let rem = self.len % 64;
        if rem != 0 {
            if let Some(last) = self.words.last_mut() {
                *last &= (1u64 << rem) - 1;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn set(&mut self, row: usize) {
        self.words[row / 64] |= 1 << (row % 64);
    }

    pub fn get(&self, row: usize) -> bool {
        self.words[row / 64] >> (row % 64) & 1 == 1
    }

    pub fn and_assign(&mut self, other: &Bitmap) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a &= *b;
        }
    }

    pub fn or_assign(&mut self, other: &Bitmap) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= *b;
        }
    }

    pub fn none(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    /// Rows whose bit is set, ascending.
    pub fn ones_iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(w, &word)| {
            let mut bits = word;
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let tz = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                Some(w * 64 + tz)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_and_iteration() {
        let a = Bitmap::from_fn(130, |r| r % 2 == 0);
        let mut b = Bitmap::from_fn(130, |r| r % 3 == 0);
        b.and_assign(&a);
        assert_eq!(
            b.ones_iter().collect::<Vec<_>>(),
            (0..130).filter(|r| r % 6 == 0).collect::<Vec<_>>()
        );
        let mut o = Bitmap::zeros(130);
        o.or_assign(&Bitmap::ones(130));
        assert_eq!(o.ones_iter().count(), 130);
        assert!(Bitmap::zeros(5).none());
    }
}
