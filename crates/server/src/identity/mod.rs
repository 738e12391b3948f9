//! Who is calling: the opaque bearer tokens the server issues and their callers ([`tokens`]), the
//! OAuth token endpoint that issues them ([`oauth`]), and the web page's sessions ([`sessions`]).
//! All of it is kept in the store, so every node knows every token and session.

pub mod oauth;
pub mod sessions;
pub mod tokens;
