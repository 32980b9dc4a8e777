//! quizflow's batcher: turns the `SUBMISSIONS` stream into stored leads and delivery jobs.

mod bitmap;
pub mod matcher;

pub use bitmap::Bitmap;
pub use matcher::{Match, Matcher};
