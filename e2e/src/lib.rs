//! System tests of FinalPrice as deployed: the real `finalprice-front` and `finalprice-worker`
//! processes, crashed and stopped under load. The tests are in `tests/`; this crate has no
//! code of its own.
