//! A batch's row is written once a submission to it is accepted (never by a refused
//! one), with the owner label of the token that created it; `submit` tokens are confined
//! to the batches whose owner is theirs (SECURITY.md, "Who may do what").

use super::{Store, StoreError};

/// Who opens a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opener<'a> {
    /// Recorded on a batch this opening creates (never changed afterwards).
    pub owner: Option<&'a str>,
    /// An existing batch must already be this owner's (a `submit` token); otherwise any
    /// existing batch may be added to.
    pub confined: bool,
}

impl Opener<'_> {
    /// The command line and unconfined tokens without a label.
    pub const TRUSTED: Opener<'static> = Opener {
        owner: None,
        confined: false,
    };
}

/// Creates the row (with its owner and callback) or, when it exists and the opener may
/// add to it, replaces its callback when one is given. One statement: the owner check and
/// the write cannot be split by another request.
const OPEN: &str = r#"
INSERT INTO batches AS b (id, owner, callback_url) VALUES ($1, $2, $3)
ON CONFLICT (id) DO UPDATE SET callback_url = COALESCE(EXCLUDED.callback_url, b.callback_url)
WHERE NOT $4 OR b.owner IS NOT DISTINCT FROM EXCLUDED.owner
RETURNING b.id
"#;

impl Store {
    /// Records that a submission to `batch` was accepted: creates its row, or adds to
    /// it. `callback_url` (checked by the caller) replaces the batch's callback when
    /// given. `Ok(false)`: the batch exists and is another owner's, nothing was written.
    pub async fn open_batch(
        &self,
        batch: &str,
        opener: Opener<'_>,
        callback_url: Option<&str>,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query_scalar::<_, String>(OPEN)
            .bind(batch)
            .bind(opener.owner)
            .bind(callback_url)
            .bind(opener.confined)
            .fetch_optional(&self.pool)
            .await;
        Ok(self.observe("opening a batch", r)?.is_some())
    }

    /// The owner label of `batch`: `None` when it has no row, `Some(None)` when it has
    /// no owner.
    pub async fn batch_owner(&self, batch: &str) -> Result<Option<Option<String>>, StoreError> {
        let r = sqlx::query_scalar::<_, Option<String>>("SELECT owner FROM batches WHERE id = $1")
            .bind(batch)
            .fetch_optional(&self.pool)
            .await;
        self.observe("reading a batch's owner", r)
    }
}
