//! podpath's control side. For now: the operator CLI `podpathctl`, which talks to a
//! dataplane's control socket with the protocol of `podpath-proto`.
