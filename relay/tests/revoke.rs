//! A revoked session's token is refused everywhere on the relay, and what that session
//! has open (QUIC connections, HTTP uploads) is closed within seconds.

mod common;

use std::time::Duration;

use common::*;
use relay::client::Client;
use relay::proto::ErrorCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn session_token(srv: &Server, user: &str, sid: &str) -> String {
    let grants = ::common::Grants {
        files: true,
        ..Default::default()
    };
    srv.keys.mint(&::common::Claims {
        sub: user.into(),
        name: None,
        room: None,
        grants,
        sid: Some(sid.into()),
        iat: now(),
        exp: now() + 900,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_session_is_refused_and_its_connections_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path(), config()).await;
    let (path, data) = random_file(dir.path(), "a", 100_000);
    let id = srv
        .client("alice")
        .await
        .upload(&path, "a", "", progress())
        .await
        .unwrap();
    let phone = session_token(&srv, "bob", "bob-phone");
    let laptop = session_token(&srv, "bob", "bob-laptop");
    let bearer = |t: &str| ("authorization", format!("Bearer {t}"));
    let tus = ("tus-resumable", "1.0.0".to_string());
    let octet = (
        "content-type",
        "application/offset+octet-stream".to_string(),
    );

    // Before: the phone's session works over QUIC and HTTP.
    let quic = Client::connect(&srv.options(phone.clone())).await.unwrap();
    assert!(quic.stat(&id).await.unwrap().complete);
    let (_, big) = random_file(dir.path(), "big", 2 << 20);
    let (st, h, _) = http(
        srv.http,
        "POST",
        "/files",
        &[
            bearer(&phone),
            tus.clone(),
            ("upload-length", big.len().to_string()),
        ],
        b"",
    )
    .await;
    assert_eq!(st, 201);
    let loc = header(&h, "location").unwrap().to_owned();
    // A PATCH under way: headers and half of the body sent, the rest held back.
    let mut patch = tokio::net::TcpStream::connect(srv.http).await.unwrap();
    let head = format!(
        "PATCH {loc} HTTP/1.1\r\nhost: t\r\nconnection: close\r\nauthorization: Bearer {phone}\r\ntus-resumable: 1.0.0\r\ncontent-type: application/offset+octet-stream\r\nupload-offset: 0\r\ncontent-length: {}\r\n\r\n",
        big.len()
    );
    patch.write_all(head.as_bytes()).await.unwrap();
    patch.write_all(&big[..1 << 20]).await.unwrap();
    // Wait until the relay has stored some of it: the PATCH is authenticated and running.
    within(10, async {
        loop {
            let (_, h, _) =
                http(srv.http, "HEAD", &loc, &[bearer(&laptop), tus.clone()], b"").await;
            if header(&h, "upload-offset").is_some_and(|o| o != "0") {
                break;
            }
            // Polling the upload's offset: the relay gives no event to wait on.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // A download under way: the tus upload's first half is sent, the rest waits for it.
    let mut get = tokio::net::TcpStream::connect(srv.http).await.unwrap();
    get.write_all(format!("GET {loc} HTTP/1.1\r\nhost: t\r\nconnection: close\r\nauthorization: Bearer {phone}\r\n\r\n").as_bytes()).await.unwrap();
    let mut first = vec![0u8; 4096];
    let n = within(10, get.read(&mut first)).await.unwrap();
    assert!(
        String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&first[..n])
    );
    let download = tokio::spawn(async move {
        let mut rest = Vec::new();
        let _ = get.read_to_end(&mut rest).await;
        n + rest.len()
    });

    srv.keys.revocations().revoke("bob-phone", now() + 900);

    // The upload under way is ended with 401, without waiting for the rest of its body.
    let mut answer = Vec::new();
    within(10, patch.read_to_end(&mut answer)).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    // So is the download, short of its end.
    let got = within(10, download).await.unwrap();
    assert!(
        got < big.len(),
        "the download of a revoked session went on to the end"
    );
    // The open QUIC connection is closed, saying why.
    match within(10, quic.closed()).await {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, relay::proto::CLOSE_REVOKED.into());
            assert_eq!(&c.reason[..], b"session revoked");
        }
        other => panic!("closed otherwise: {other}"),
    }
    let err = within(10, quic.stat(&id))
        .await
        .expect_err("a revoked session's open connection still answers");
    assert!(err.code() != Some(ErrorCode::NotFound), "{err}");
    // New requests: refused on every path.
    let (st, _, body) = http(
        srv.http,
        "GET",
        &format!("/files/{id}"),
        &[bearer(&phone)],
        b"",
    )
    .await;
    assert_eq!(st, 401, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("revoked"));
    let (st, _, _) = http(
        srv.http,
        "GET",
        &format!("/files/{id}?access_token={phone}"),
        &[],
        b"",
    )
    .await;
    assert_eq!(st, 401);
    let (st, _, _) = http(
        srv.http,
        "POST",
        "/files",
        &[bearer(&phone), tus.clone(), ("upload-length", "10".into())],
        b"",
    )
    .await;
    assert_eq!(st, 401);
    let (st, _, _) = http(srv.http, "HEAD", &loc, &[bearer(&phone), tus.clone()], b"").await;
    assert_eq!(st, 401);
    let (st, _, _) = http(
        srv.http,
        "PATCH",
        &loc,
        &[
            bearer(&phone),
            tus.clone(),
            octet.clone(),
            ("upload-offset", "0".into()),
        ],
        &big[..16384],
    )
    .await;
    assert_eq!(st, 401);
    let err = Client::connect(&srv.options(phone.clone()))
        .await
        .err()
        .expect("a revoked token connects");
    assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");
    assert!(err.to_string().contains("revoked"), "{err}");

    // Bob's other session is not affected, and the upload it did not start is his to finish.
    let c = Client::connect(&srv.options(laptop.clone())).await.unwrap();
    let out = dir.path().join("out");
    c.download(&id, &out, progress()).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == data);
    let (st, h, _) = http(srv.http, "HEAD", &loc, &[bearer(&laptop), tus.clone()], b"").await;
    assert_eq!(st, 200);
    let offset = header(&h, "upload-offset").unwrap().to_owned();
    let o: usize = offset.parse().unwrap();
    let (st, h, _) = http(
        srv.http,
        "PATCH",
        &loc,
        &[bearer(&laptop), tus, octet, ("upload-offset", offset)],
        &big[o..],
    )
    .await;
    assert_eq!(st, 204);
    assert_eq!(
        header(&h, "upload-offset"),
        Some(big.len().to_string().as_str())
    );
    let (st, _, body) = http(srv.http, "GET", &loc, &[bearer(&laptop)], b"").await;
    assert_eq!(st, 200);
    assert!(body == big);
}
