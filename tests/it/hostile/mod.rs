//! Hostile input. Property tests feed arbitrary strings, enum numbers and
//! repeated fields to the request -> domain conversion (`grpc::convert`) and
//! to the domain parsers (versions, ids, scopes, interfaces, platforms,
//! declarations, settings updates, imports): never a panic, Ok exactly for
//! the documented inputs, errors naming the field in a message small enough
//! for an HTTP/2 header, however long the value. Then a flood of malformed
//! requests (bad fields, bytes that are not protobuf, gRPC frames that lie,
//! oversized messages, unknown methods) against a live daemon: each gets its
//! status code, none changes the store, and the daemon keeps serving.

mod bad_fields;
mod bad_frames;
mod bad_imports;
mod cases;
mod flood;
mod parsers;
mod requests;
mod strategies;
mod wire;
