//! CAR reader: never panics; what it accepts is hash-checked and survives a write/read cycle.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use rookery::atproto::car::{self, CarLimits};
use rookery::atproto::cid::cid_with_codec;

fuzz_target!(|data: &[u8]| {
    let limits = CarLimits::default();
    let Ok(parsed) = car::read_car(Bytes::copy_from_slice(data), &limits) else {
        return;
    };
    assert!(!parsed.roots.is_empty());
    assert!(parsed.blocks.len() <= limits.max_blocks);
    let mut total = 0;
    for (cid, block) in parsed.blocks.iter() {
        assert_eq!(
            &cid_with_codec(cid.codec(), block),
            cid,
            "block matches its CID"
        );
        total += block.len();
    }
    assert_eq!(parsed.blocks.total_bytes(), total);
    let written = car::write_car(
        &parsed.roots,
        parsed.blocks.iter().map(|(c, b)| (c, &b[..])),
    );
    let again = car::read_car(
        Bytes::from(written),
        &CarLimits {
            max_bytes: usize::MAX,
            ..limits
        },
    )
    .expect("re-read what was written");
    assert_eq!(again, parsed);
});
