//! Reading a response body with a size bound: a `Content-Length` over the bound is refused
//! before reading, and a body without one is read in chunks and refused at the bound.

/// The body, or `Err(())` when it exceeds `limit` bytes; transport errors as `reqwest`'s.
pub(crate) async fn read_bounded(
    mut response: reqwest::Response,
    limit: u64,
) -> Result<Result<bytes::Bytes, ()>, reqwest::Error> {
    if response.content_length().is_some_and(|n| n > limit) {
        return Ok(Err(()));
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = response.chunk().await? {
        if (body.len() + chunk.len()) as u64 > limit {
            return Ok(Err(()));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Ok(body.freeze()))
}
