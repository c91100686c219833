//! The console's login cannot be used to guess tokens online: ten wrong tokens from one
//! address lock that address out (429, Retry-After) — even the right token, until the
//! window frees — while another address still logs in.

use std::net::IpAddr;
use std::time::Duration;

use crate::support::{TOKEN, TestApp};

use super::{bounded, spawn_with_callbacks};

/// A client that logs in from `local` (any 127.0.0.0/8 address reaches the server).
fn client_from(local: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::from(local))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// One login attempt through the form (its CSRF cookie and field first): the status and
/// the Retry-After header.
async fn log_in(app: &TestApp, client: &reqwest::Client, token: &str) -> (u16, Option<String>) {
    let form = client
        .get(format!("{}/console/login", app.base))
        .send()
        .await
        .unwrap();
    let csrf = form
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.strip_prefix("mailpipe_console_login="))
        .and_then(|c| c.split(';').next())
        .unwrap()
        .to_owned();
    let r = client
        .post(format!("{}/console/login", app.base))
        .header("cookie", format!("mailpipe_console_login={csrf}"))
        .form(&[("csrf", csrf.as_str()), ("token", token)])
        .send()
        .await
        .unwrap();
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (r.status().as_u16(), retry)
}

#[tokio::test]
async fn ten_wrong_tokens_lock_an_address_out_of_the_console_login() {
    bounded("the login limit", Duration::from_secs(120), async {
        let app = spawn_with_callbacks("sec-login", &[], |_| {}).await;
        let guesser = client_from([127, 0, 0, 2]);
        for i in 0..10 {
            let (status, _) = log_in(&app, &guesser, &format!("guess-{i}")).await;
            assert_eq!(status, 401, "guess {i}");
        }
        let (status, retry) = log_in(&app, &guesser, "guess-10").await;
        assert_eq!(status, 429);
        let retry: u64 = retry.expect("Retry-After").parse().unwrap();
        assert!((1..=600).contains(&retry), "{retry}");
        // Locked out means locked out: the right token waits too.
        assert_eq!(log_in(&app, &guesser, TOKEN).await.0, 429);
        // Another address is not.
        let operator = client_from([127, 0, 0, 3]);
        assert_eq!(log_in(&app, &operator, TOKEN).await.0, 303);
        app.cleanup().await;
    })
    .await;
}
