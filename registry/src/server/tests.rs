//! Router tests with `oneshot`.
