//! Runs the 1 KB api hot path N times (first argument), for callgrind: the difference
//! of the instruction counts of two runs divided by the difference of N is the cost of
//! one request, independent of a noisy machine.

use std::hint::black_box;
use vibefollow_bench::{accept, body_of};

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let body = body_of(1024);
    for _ in 0..runs {
        black_box(accept(black_box(&body)));
    }
}
