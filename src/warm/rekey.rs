//! The re-key step of a restored clone: everything a clone shares with its
//! template and with every other clone is made its own before any job sees
//! it (see `../shared/spec/warm-start.md` §2–§4).
