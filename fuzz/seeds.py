#!/usr/bin/env python3
"""Writes the committed seed corpus of the fuzz targets (fuzz/corpus/<target>/) from real
examples: docs/protocol.md, docs/chat.md and docs/relay.md messages, STUN requests as
browsers send them (RFC 5769 / RFC 8489), SDP offers as Chromium and Firefox make them,
tus 1.0 and RFC 9110 headers. Deterministic: run it again and git shows no change.

    python3 fuzz/seeds.py
"""
import base64, hashlib, hmac, json, os, struct, zlib

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- STUN ---------------------------------------------------------------------------

def stun(msg_type, txid, attrs, integrity_key=None, fingerprint=True):
    """A STUN message (RFC 8489) with MESSAGE-INTEGRITY and FINGERPRINT done right."""
    def attr(t, v):
        return struct.pack("!HH", t, len(v)) + v + b"\0" * (-len(v) % 4)

    body = b"".join(attr(t, v) for t, v in attrs)
    if integrity_key is not None:
        head = struct.pack("!HHI", msg_type, len(body) + 24, 0x2112A442) + txid
        mac = hmac.new(integrity_key, head + body, hashlib.sha1).digest()
        body += attr(0x0008, mac)
    if fingerprint:
        head = struct.pack("!HHI", msg_type, len(body) + 8, 0x2112A442) + txid
        crc = (zlib.crc32(head + body) ^ 0x5354554E) & 0xFFFFFFFF
        body += attr(0x8028, struct.pack("!I", crc))
    return struct.pack("!HHI", msg_type, len(body), 0x2112A442) + txid + body


# RFC 5769 2.1: the sample request (username "evtj:h6vY", password "VOkJxbRl1RmTxUk/WvJxBt").
rfc5769_txid = bytes.fromhex("b7e7a701bc34d686fa87dfae")
put("stun", "rfc5769-request", stun(0x0001, rfc5769_txid, [
    (0x8022, b"STUN test client"),
    (0x0024, bytes.fromhex("6e0001ff")),
    (0x8029, bytes.fromhex("932ff9b151263b36")),
    (0x0006, b"evtj:h6vY"),
], integrity_key=b"VOkJxbRl1RmTxUk/WvJxBt"))
# An ICE connectivity check as Chromium sends it to an ICE-lite server: USERNAME
# server-ufrag:client-ufrag, GOOG-NETWORK-INFO, ICE-CONTROLLING, USE-CANDIDATE, PRIORITY.
put("stun", "chromium-check", stun(0x0001, bytes(range(1, 13)), [
    (0x0006, b"Xy3kPq7Z:Ab12"),
    (0xC057, bytes.fromhex("00010000")),
    (0x802A, bytes.fromhex("1a2b3c4d5e6f7081")),
    (0x0025, b""),
    (0x0024, bytes.fromhex("6e7f1eff")),
], integrity_key=b"P2uYro0UCOQ4zxjKXaWCBui1"))
# A binding success response (XOR-MAPPED-ADDRESS of 192.0.2.1:32853): no USERNAME.
put("stun", "binding-response", stun(0x0101, rfc5769_txid, [
    (0x0020, bytes.fromhex("0001a147e112a643")),
], integrity_key=b"VOkJxbRl1RmTxUk/WvJxBt"))
# Not STUN: a DTLS ClientHello's record header and an RTP packet share the port.
put("stun", "dtls-record", bytes.fromhex("16fefd0000000000000000") + bytes(40))
put("stun", "rtp", bytes.fromhex("80e01234000000011234567890") + bytes(20))

# --- /rtc (docs/protocol.md) ----------------------------------------------------------

rtc = {
    "join": '{"type":"join","auto_subscribe":true}',
    "join-bare": '{"type":"join"}',
    "resume": '{"type":"resume","session_id":"SE_8Y83YWhsgWk2"}',
    "offer": '{"type":"offer","sdp":"v=0...","tracks":[{"mid":"0","source":"microphone"},{"mid":"1","source":"camera","name":"cam"}]}',
    "answer": '{"type":"answer","sdp":"v=0...","offer_id":1}',
    "trickle": '{"type":"trickle","pc":"publisher","candidate":"candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0"}',
    "subscribe": '{"type":"subscribe","track_ids":["TR_1","TR_2"]}',
    "unsubscribe": '{"type":"unsubscribe","track_ids":["TR_2"]}',
    "set-quality": '{"type":"set_quality","track_id":"TR_2","max_quality":"low"}',
    "set-quality-paused": '{"type":"set_quality","track_id":"TR_2","max_quality":"high","paused":true}',
    "mute": '{"type":"mute","track_id":"TR_1","muted":true}',
    "unpublish": '{"type":"unpublish","track_id":"TR_1"}',
    "ice-restart": '{"type":"ice_restart"}',
    "ping": '{"type":"ping"}',
    "leave": '{"type":"leave"}',
    "unknown-field": '{"type":"ping","x":1}',
}
for k, v in rtc.items():
    put("rtc_msg", k, v)

# --- SDP offers ----------------------------------------------------------------------

CHROME_OFFER = """v=0
o=- 4611731400430051336 2 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0 1
a=extmap-allow-mixed
a=msid-semantic: WMS stream
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126
c=IN IP4 0.0.0.0
a=rtcp:9 IN IP4 0.0.0.0
a=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0 network-id 1
a=ice-ufrag:EsAw
a=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1
a=ice-options:trickle
a=fingerprint:sha-256 19:E2:1C:3B:4B:9F:81:E6:B8:5C:F4:A5:A8:D8:73:04:BB:05:2F:70:9F:04:A9:0E:05:E9:26:33:E8:70:88:A2
a=setup:actpass
a=mid:0
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid
a=sendonly
a=msid:stream audio0
a=rtcp-mux
a=rtpmap:111 opus/48000/2
a=rtcp-fb:111 transport-cc
a=fmtp:111 minptime=10;useinbandfec=1
a=rtpmap:63 red/48000/2
a=fmtp:63 111/111
a=rtpmap:9 G722/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:13 CN/8000
a=rtpmap:110 telephone-event/48000
a=rtpmap:126 telephone-event/8000
a=ssrc:3570614608 cname:4TOk42mSjXCkVIa6
a=ssrc:3570614608 msid:stream audio0
m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103 45 46
c=IN IP4 0.0.0.0
a=rtcp:9 IN IP4 0.0.0.0
a=ice-ufrag:EsAw
a=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1
a=ice-options:trickle
a=fingerprint:sha-256 19:E2:1C:3B:4B:9F:81:E6:B8:5C:F4:A5:A8:D8:73:04:BB:05:2F:70:9F:04:A9:0E:05:E9:26:33:E8:70:88:A2
a=setup:actpass
a=mid:1
a=extmap:14 urn:ietf:params:rtp-hdrext:toffset
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time
a=extmap:13 urn:3gpp:video-orientation
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid
a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id
a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id
a=sendonly
a=msid:stream video0
a=rtcp-mux
a=rtcp-rsize
a=rtpmap:96 VP8/90000
a=rtcp-fb:96 goog-remb
a=rtcp-fb:96 transport-cc
a=rtcp-fb:96 ccm fir
a=rtcp-fb:96 nack
a=rtcp-fb:96 nack pli
a=rtpmap:97 rtx/90000
a=fmtp:97 apt=96
a=rtpmap:102 H264/90000
a=rtcp-fb:102 nack
a=rtcp-fb:102 nack pli
a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f
a=rtpmap:103 rtx/90000
a=fmtp:103 apt=102
a=rtpmap:45 AV1/90000
a=rtcp-fb:45 nack pli
a=rtpmap:46 rtx/90000
a=fmtp:46 apt=45
a=rid:q send
a=rid:h send
a=rid:f send
a=simulcast:send q;h;f
""".replace("\n", "\r\n")

FIREFOX_WHEP_OFFER = """v=0
o=mozilla...THIS_IS_SDPARTA-99.0 7052848360639826063 0 IN IP4 0.0.0.0
s=-
t=0 0
a=fingerprint:sha-256 F7:2B:0D:2C:EA:D8:F6:3A:2A:B1:3E:1B:A0:2E:0B:52:6D:8E:6B:9D:96:06:63:6F:E3:9C:45:A2:63:A3:5C:27
a=group:BUNDLE 0 1
a=ice-options:trickle
a=msid-semantic:WMS *
m=audio 9 UDP/TLS/RTP/SAVPF 109 9 0 8 101
c=IN IP4 0.0.0.0
a=recvonly
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level
a=extmap:3 urn:ietf:params:rtp-hdrext:sdes:mid
a=fmtp:109 maxplaybackrate=48000;stereo=1;useinbandfec=1
a=fmtp:101 0-15
a=ice-pwd:7a2c8e4b19d1f0e3a6b5c4d3e2f1a0b9
a=ice-ufrag:1f2e3d4c
a=mid:0
a=rtcp-mux
a=rtpmap:109 opus/48000/2
a=rtpmap:9 G722/8000/1
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=setup:actpass
a=ssrc:2845293106 cname:{0b4cf8a2-6e0f-4b8e-9c6c-3f1a5d7e9b21}
m=video 9 UDP/TLS/RTP/SAVPF 120 124 121 125 126 127 97 98
c=IN IP4 0.0.0.0
a=recvonly
a=extmap:3 urn:ietf:params:rtp-hdrext:sdes:mid
a=extmap:4 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time
a=extmap:5 urn:ietf:params:rtp-hdrext:toffset
a=extmap:7 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01
a=fmtp:126 profile-level-id=42e01f;level-asymmetry-allowed=1;packetization-mode=1
a=fmtp:97 profile-level-id=42e01f;level-asymmetry-allowed=1
a=fmtp:120 max-fs=12288;max-fr=60
a=fmtp:124 apt=120
a=fmtp:121 max-fs=12288;max-fr=60
a=fmtp:125 apt=121
a=fmtp:127 apt=126
a=fmtp:98 apt=97
a=ice-pwd:7a2c8e4b19d1f0e3a6b5c4d3e2f1a0b9
a=ice-ufrag:1f2e3d4c
a=mid:1
a=rtcp-fb:120 nack
a=rtcp-fb:120 nack pli
a=rtcp-fb:120 ccm fir
a=rtcp-fb:120 goog-remb
a=rtcp-fb:120 transport-cc
a=rtcp-mux
a=rtcp-rsize
a=rtpmap:120 VP8/90000
a=rtpmap:124 rtx/90000
a=rtpmap:121 VP9/90000
a=rtpmap:125 rtx/90000
a=rtpmap:126 H264/90000
a=rtpmap:127 rtx/90000
a=rtpmap:97 H264/90000
a=rtpmap:98 rtx/90000
a=setup:actpass
a=ssrc:3126845620 cname:{0b4cf8a2-6e0f-4b8e-9c6c-3f1a5d7e9b21}
""".replace("\n", "\r\n")

AUDIO_ONLY_OFFER = CHROME_OFFER.split("m=video")[0].replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 0")

put("sdp_offer", "chromium-simulcast", CHROME_OFFER)
put("sdp_offer", "firefox-whep", FIREFOX_WHEP_OFFER)
put("sdp_offer", "audio-only", AUDIO_ONLY_OFFER)

# --- WHIP/WHEP PATCH (RFC 9725 4.3.1 / RFC 8840) ---------------------------------------

FRAG = ("a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
        "a=mid:0\r\na=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0 ufrag EsAw network-id 1\r\n"
        "a=candidate:3471623853 1 udp 2122194687 198.51.100.2 61765 typ host generation 0 ufrag EsAw network-id 2\r\n"
        "a=candidate:473322822 1 tcp 1518280447 192.0.2.1 9 typ host tcptype active generation 0 ufrag EsAw network-id 1\r\n"
        "a=candidate:2154773085 1 udp 1686052607 203.0.113.5 40000 typ srflx raddr 192.0.2.1 rport 61764 generation 0\r\n"
        "a=end-of-candidates\r\n")
RESTART = "a=ice-ufrag:ysXw\r\na=ice-pwd:vw5LmwG4y/e6dPP/zAP9Gp5k\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n"
put("whip_patch", "trickle", FRAG)
put("whip_patch", "ice-restart", RESTART)
put("whip_patch", "end-of-candidates", "a=end-of-candidates\r\n")
put("whip_patch", "ipv6-candidate", "a=candidate:1 1 UDP 2130706431 2001:db8::1 5000 typ host\r\n")

# --- the engine: NUL-separated operations, a kind byte then a payload ----------------
# kinds: 0 /rtc JSON, 1 publisher offer, 2 subscriber answer, 3 trickle, 4 WHIP/WHEP
# POST (0x84 = WHEP), 5 PATCH, 6 datagram, 7 STUN to a server ufrag + attributes,
# 8 advance the clock, 9 ice_restart.

def ops(*items):
    return b"\0".join(bytes([k]) + (p.encode() if isinstance(p, str) else p) for k, p in items)

cand = "candidate:1387637174 1 udp 2122260223 10.0.0.2 5000 typ host generation 0"
put("engine", "publish-and-trickle", ops((1, CHROME_OFFER), (3, cand), (7, b""), (8, b"\x05"), (9, "")))
put("engine", "publish-audio", ops((1, AUDIO_ONLY_OFFER), (7, b""), (8, b"\x32"), (0, '{"type":"mute","track_id":"TR_1","muted":true}')))
put("engine", "whip-then-patch", ops((4, CHROME_OFFER), (5, FRAG), (5, RESTART), (7, b""), (8, b"\xff")))
put("engine", "whep", ops((1, CHROME_OFFER), (0x84, FIREFOX_WHEP_OFFER), (8, b"\x0a"), (2, FIREFOX_WHEP_OFFER)))
put("engine", "rtc-messages", ops(*[(0, v) for v in rtc.values()]))
put("engine", "datagrams", ops((6, open(os.path.join(ROOT, "stun", "chromium-check"), "rb").read()),
                               (6, bytes.fromhex("80e01234000000011234567890") + bytes(20))))

# --- chat /ws (docs/chat.md) -----------------------------------------------------------

ws = {
    "auth": '{"type": "auth", "access_token": "<JWT>", "req_id": 1}',
    "sync": '{"type": "sync", "since": [{"chat_id": 1, "seq": 12}]}',
    "send": '{"type": "send", "chat_id": 1, "client_id": "c-2", "text": "hi", "req_id": 7}',
    "send-voice": '{"type": "send", "chat_id": 1, "client_id": "c-3", "attachments": [{"file_id": "9f86d081884c7d659a2feaa0c55ad015", "name": "voice.ogg", "size": 12345, "mime": "audio/ogg", "duration_ms": 4100, "waveform": [0, 12, 200, 255]}]}',
    "send-forward": '{"type": "send", "chat_id": 2, "client_id": "c-4", "forward_from": {"chat_id": 1, "seq": 14}, "reply_to": 3}',
    "send-sticker": '{"type": "send", "chat_id": 1, "client_id": "c-5", "sticker": "9f86d081884c7d659a2feaa0c55ad015"}',
    "edit": '{"type": "edit", "chat_id": 1, "seq": 14, "text": "hi all"}',
    "delete": '{"type": "delete", "chat_id": 1, "seq": 14, "for_everyone": true}',
    "react": '{"type": "react", "chat_id": 1, "seq": 14, "emoji": "\U0001F44D", "remove": false}',
    "typing": '{"type": "typing", "chat_id": 1}',
    "delivered": '{"type": "delivered", "chat_id": 1, "seq": 14}',
    "read": '{"type": "read", "chat_id": 1, "seq": 14}',
    "ping": '{"type": "ping", "req_id": "p1"}',
}
for k, v in ws.items():
    put("ws_frame", k, v)

# --- relay frames (docs/relay.md): 4-byte big-endian length, then JSON ------------------

def frame(obj):
    body = json.dumps(obj, separators=(",", ":")).encode()
    return struct.pack("!I", len(body)) + body

fid = "9f86d081884c7d659a2feaa0c55ad015"
h = hashlib.sha256(b"seed").hexdigest()
put("relay_frame", "hello", frame({"op": "hello", "version": 1, "token": "eyJhbGciOiJIUzI1NiJ9.e30.x"}))
put("relay_frame", "upload", frame({"op": "begin", "name": "video.mp4", "mime": "video/mp4", "size": 4294967296, "hash": h})
    + frame({"op": "put", "file": fid, "offset": 0, "len": 8388608}))
put("relay_frame", "dedup", frame({"op": "prove", "mac": h.upper()}))
put("relay_frame", "download", frame({"op": "stat", "file": fid}) + frame({"op": "outboard", "file": fid})
    + frame({"op": "get", "file": fid, "offset": 0, "len": 16384}) + frame({"op": "get", "file": fid, "offset": 16384}))
put("relay_frame", "responses", frame({"type": "welcome", "user": "bob", "max_file_size": 4294967296})
    + frame({"type": "send_outboard", "len": 8388608}) + frame({"type": "challenge", "nonce": h})
    + frame({"type": "upload", "file": fid, "complete": False, "missing": [[0, 262144]]})
    + frame({"type": "stored", "complete": False}) + frame({"type": "data", "offset": 0, "len": 16384})
    + frame({"type": "stat", "id": fid, "name": "a.txt", "mime": "text/plain", "size": 5, "hash": h, "complete": True,
             "stored": 5, "created": 1764030000, "expires": 1766622000})
    + frame({"type": "outboard_data", "len": 32}) + frame({"type": "error", "code": "not_found", "message": "no such file"}))
put("relay_frame", "too-large", struct.pack("!I", 65537))

# --- tus 1.0 headers (tus.io protocol examples) -----------------------------------------

b64 = lambda s: base64.b64encode(s.encode()).decode()
put("tus_headers", "creation", f"Tus-Resumable: 1.0.0\nUpload-Length: 100\nUpload-Metadata: filename {b64('world_domination_plan.pdf')},is_confidential\n")
put("tus_headers", "creation-type", f"Tus-Resumable: 1.0.0\nUpload-Length: 4294967296\nUpload-Metadata: filename {b64('видео.mp4')},filetype {b64('video/mp4')}\n")
put("tus_headers", "patch", "Tus-Resumable: 1.0.0\nContent-Type: application/offset+octet-stream\nUpload-Offset: 70\nContent-Length: 30\n")
put("tus_headers", "head", "Tus-Resumable: 1.0.0\nAuthorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.x\n")
put("tus_headers", "old-version", "Tus-Resumable: 0.2.2\nUpload-Defer-Length: 1\n")

# --- Range (RFC 9110 14.2): 8-byte little-endian file size, then the header value -------

for name, size, v in [("first-500", 10000, "bytes=0-499"), ("second-500", 10000, "bytes=500-999"),
                      ("suffix", 10000, "bytes=-500"), ("from", 10000, "bytes=9500-"),
                      ("two-ranges", 10000, "bytes=0-0,-1"), ("past-end", 100, "bytes=100-"),
                      ("big", 4294967296, "bytes=4294950912-4294967295")]:
    put("http_range", name, struct.pack("<Q", size) + v.encode())

# --- scrub / limit_key: 19 bytes of address (kind, 16 address bytes, port), then text --

def addr(kind, ip16, port, l=0, r=0):
    return bytes([kind]) + ip16 + struct.pack("!H", port)

v4 = bytes([0, 192, 0, 2, 7, 1, 2]) + bytes(11)
v6 = bytes([1]) + bytes.fromhex("20010db8000000000000000000000001") + struct.pack("!H", 443)
for name, a, text in [
    ("str0m-ice", v4, "ICE: no candidate pair for 192.0.2.7:5000 -> 10.0.0.1:7882 (nominated)"),
    ("quinn", v6, "connection lost: timed out talking to [2001:db8::1]:443 after 30s"),
    ("dtls", v4, "DTLS: handshake failed: peer closed, code 0x1f at 12:30"),
    ("plain", v6, "peer connection failed: DTLS closed"),
]:
    put("scrub_addr", name, a + text.encode())

# --- tokens: a mode byte (0 any text, 1 signed claims, 2 signed header NUL claims) ------

def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

secret = bytes([7]) * 32
header = b'{"alg":"HS256","typ":"JWT"}'
claims = b'{"sub":"alice","room":"demo","grants":{"publish":true,"subscribe":true},"iat":1764000000,"exp":4102444800}'
signing = f"{b64u(header)}.{b64u(claims)}"
jwt = signing + "." + b64u(hmac.new(secret, signing.encode(), hashlib.sha256).digest())
put("token", "valid-jwt", b"\0" + jwt.encode())
put("token", "claims-room", b"\x01" + claims)
put("token", "claims-session", b"\x01" + b'{"sub":"5","sid":"s1","grants":{"chat":true,"files":true},"iat":1764000000,"exp":4102444800}')
put("token", "claims-expired", b"\x01" + b'{"sub":"5","iat":1,"exp":2}')
put("token", "header-none", b"\x02" + b'{"alg":"none"}' + b"\0" + claims)
put("token", "not-a-jwt", b"\0not.a.jwt")
