//! Tables nobody has decoded: only their measured shapes, every code slot an [`unknown`]
//! reporter.
//!
//! [`unknown`]: super::unknown

use super::unknown::{self, unknown_slots};
use super::Table;

/// Slot [91] is not code in the driver's table (its value was not recorded): NULL here.
pub(crate) static T21318C60: Table<93> = Table({
    let mut w = Table::<93>::sized();
    unknown_slots!(w, unknown::T21318C60;
        1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30
        31 32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60
        61 62 63 64 65 66 67 68 69 70 71 72 73 74 75 76 77 78 79 80 81 82 83 84 85 86 87 88 89 90
        92);
    w
});

pub(crate) static T69A28E9F: Table<34> = Table({
    let mut w = Table::<34>::sized();
    unknown_slots!(w, unknown::T69A28E9F;
        1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30
        31 32 33);
    w
});

pub(crate) static DA9151D3: Table<7> = Table({
    let mut w = Table::<7>::sized();
    unknown_slots!(w, unknown::DA9151D3; 1 2 3 4 5 6);
    w
});
