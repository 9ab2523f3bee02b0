// Command whip_publisher is a WHIP (RFC 9725) publisher on Pion WebRTC v3 (Debian
// bookworm's 3.1), for maxd's end-to-end tests (tests/pion_consent.rs).
//
// It publishes one Opus and one VP8 track of synthetic RTP (no encoder): the payloads
// have the layout of testkit/src/media.rs - codec headers, then an integrity record
// carrying the FNV-1a hash of the participant id that the server names in
// X-Maxd-Participant - so the test's subscribers verify every packet they get.
//
// Like the Pion 3.1 publishers of issue 10 it sends no STUN consent checks while it
// streams: the ICE keepalive interval is 0 (Pion sends keepalive binding requests only
// when that interval is non-zero), and the disconnected and failed timeouts are an hour,
// so it goes on sending whatever the server does. After ICE connects it sends nothing but
// DTLS and SRTP/SRTCP.
//
// -via HOST:PORT replaces the address of the server's UDP candidates in the answer (and
// drops its TCP ones), so that the test can put a counting UDP proxy on the path.
//
// Standard output, one event a line: "participant ID", "ice STATE", "pc STATE",
// "sent audio=N video=M" (every second). The token comes from WHIP_TOKEN.
//
// Build offline: GO111MODULE=off GOPATH=/usr/share/gocode go build whip_publisher.go
package main

import (
	"bytes"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pion/ice/v2"
	"github.com/pion/interceptor"
	"github.com/pion/logging"
	"github.com/pion/rtp"
	"github.com/pion/webrtc/v3"
)

var (
	baseURL = flag.String("url", "", "maxd base URL, e.g. http://127.0.0.1:8080")
	room    = flag.String("room", "main", "room to publish into")
	via     = flag.String("via", "", "HOST:PORT to reach the server's UDP candidates through")
)

// Record layout of testkit/src/media.rs.
var magic = []byte("MXTK")

const recordOverhead = 4 + 4 + 4 + 2 + 4

func fnv1a(data []byte) uint32 {
	h := uint32(0x811c9dc5)
	for _, b := range data {
		h ^= uint32(b)
		h *= 0x01000193
	}
	return h
}

func buildRecord(sender, counter uint32, n int) []byte {
	if n < recordOverhead {
		n = recordOverhead
	}
	out := make([]byte, 0, n)
	out = append(out, magic...)
	out = binary.BigEndian.AppendUint32(out, sender)
	out = binary.BigEndian.AppendUint32(out, counter)
	out = binary.BigEndian.AppendUint16(out, uint16(n))
	x := counter*2654435761 ^ sender
	for i := 0; i < n-recordOverhead; i++ {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		out = append(out, byte(x))
	}
	return binary.BigEndian.AppendUint32(out, fnv1a(out))
}

func audioPayload(sender, counter uint32) []byte {
	// Opus TOC 0x78 (20 ms), then a 70..90 byte record.
	return append([]byte{0x78}, buildRecord(sender, counter, 70+int(counter%21))...)
}

func vp8Payload(keyframe bool, sender, counter uint32) []byte {
	n := 400 + int((counter*37)%480)
	if keyframe {
		n = 980
	}
	record := buildRecord(sender, counter, n)
	out := []byte{0x10} // descriptor: S bit, partition 0
	tag := uint32(len(record))<<5 | 1<<4
	if !keyframe {
		tag |= 1
	}
	out = append(out, byte(tag), byte(tag>>8), byte(tag>>16))
	if keyframe {
		out = append(out, 0x9d, 0x01, 0x2a, 160, 0, 120, 0) // start code, 160x120
	}
	return append(out, record...)
}

// rewriteCandidates points the answer's UDP candidates at -via and drops the others.
func rewriteCandidates(sdp, via string) (string, error) {
	host, port, err := net.SplitHostPort(via)
	if err != nil {
		return "", err
	}
	var out strings.Builder
	kept := 0
	for _, line := range strings.SplitAfter(sdp, "\n") {
		if strings.HasPrefix(line, "a=candidate:") {
			// a=candidate:FOUNDATION COMPONENT TRANSPORT PRIORITY ADDRESS PORT typ TYPE ...
			f := strings.Fields(strings.TrimSpace(line))
			if len(f) < 8 || !strings.EqualFold(f[2], "udp") {
				continue
			}
			f[4], f[5] = host, port
			line = strings.Join(f, " ") + "\r\n"
			kept++
		}
		out.WriteString(line)
	}
	if kept == 0 {
		return "", fmt.Errorf("the answer has no UDP candidate")
	}
	return out.String(), nil
}

func main() {
	flag.Parse()
	token := os.Getenv("WHIP_TOKEN")
	if *baseURL == "" || token == "" {
		fmt.Fprintln(os.Stderr, "usage: WHIP_TOKEN=... whip_publisher -url URL [-room ROOM] [-via HOST:PORT]")
		os.Exit(2)
	}
	if err := run(token); err != nil {
		fmt.Fprintln(os.Stderr, "whip_publisher:", err)
		os.Exit(1)
	}
}

func run(token string) error {
	m := &webrtc.MediaEngine{}
	if err := m.RegisterDefaultCodecs(); err != nil {
		return err
	}
	ir := &interceptor.Registry{}
	if err := webrtc.RegisterDefaultInterceptors(m, ir); err != nil {
		return err
	}
	s := webrtc.SettingEngine{}
	logs := logging.NewDefaultLoggerFactory() // PION_LOG_* still apply
	logs.Writer = os.Stderr                   // standard output carries the events
	s.LoggerFactory = logs
	// No keepalives (so no consent checks), and do not give the connection up within
	// a test (0 would fail it at once while checking).
	s.SetICETimeouts(time.Hour, time.Hour, 0)
	s.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	s.SetIncludeLoopbackCandidate(true)
	s.SetInterfaceFilter(func(name string) bool { return name == "lo" })
	s.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	api := webrtc.NewAPI(webrtc.WithMediaEngine(m), webrtc.WithInterceptorRegistry(ir), webrtc.WithSettingEngine(s))

	pc, err := api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		return err
	}
	defer pc.Close()
	audio, err := webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2}, "audio", "pion")
	if err != nil {
		return err
	}
	video, err := webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeVP8, ClockRate: 90000}, "video", "pion")
	if err != nil {
		return err
	}
	for _, t := range []webrtc.TrackLocal{audio, video} {
		sender, err := pc.AddTransceiverFromTrack(t, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly})
		if err != nil {
			return err
		}
		// Read (and drop) RTCP so the interceptors see it.
		go func(r *webrtc.RTPSender) {
			buf := make([]byte, 1500)
			for {
				if _, _, err := r.Read(buf); err != nil {
					return
				}
			}
		}(sender.Sender())
	}
	pc.OnICEConnectionStateChange(func(st webrtc.ICEConnectionState) { fmt.Printf("ice %s\n", st) })
	pc.OnConnectionStateChange(func(st webrtc.PeerConnectionState) { fmt.Printf("pc %s\n", st) })

	offer, err := pc.CreateOffer(nil)
	if err != nil {
		return err
	}
	gathered := webrtc.GatheringCompletePromise(pc)
	if err := pc.SetLocalDescription(offer); err != nil {
		return err
	}
	<-gathered

	req, err := http.NewRequest("POST", strings.TrimRight(*baseURL, "/")+"/whip/"+*room, bytes.NewBufferString(pc.LocalDescription().SDP))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/sdp")
	resp, err := (&http.Client{Timeout: 15 * time.Second}).Do(req)
	if err != nil {
		return err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("POST /whip/%s: %s %s", *room, resp.Status, strings.TrimSpace(string(body)))
	}
	participant := resp.Header.Get("X-Maxd-Participant")
	fmt.Printf("participant %s\n", participant)
	answer := string(body)
	if *via != "" {
		if answer, err = rewriteCandidates(answer, *via); err != nil {
			return err
		}
	}
	if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: answer}); err != nil {
		return err
	}

	sender := fnv1a([]byte(participant))
	var audioSent, videoSent uint64
	go func() {
		// 20 ms Opus packets.
		seq, ts := uint16(0), uint32(0)
		pace := time.NewTicker(20 * time.Millisecond)
		for c := uint32(0); ; c++ {
			<-pace.C
			p := &rtp.Packet{Header: rtp.Header{Version: 2, Marker: c == 0, SequenceNumber: seq, Timestamp: ts}, Payload: audioPayload(sender, c)}
			if audio.WriteRTP(p) == nil {
				atomic.AddUint64(&audioSent, 1)
			}
			seq++
			ts += 960
		}
	}()
	go func() {
		// 30 fps, one packet a frame, a keyframe every 30 frames.
		seq, ts := uint16(0), uint32(0)
		pace := time.NewTicker(33 * time.Millisecond)
		for c := uint32(0); ; c++ {
			<-pace.C
			p := &rtp.Packet{Header: rtp.Header{Version: 2, Marker: true, SequenceNumber: seq, Timestamp: ts}, Payload: vp8Payload(c%30 == 0, sender, c)}
			if video.WriteRTP(p) == nil {
				atomic.AddUint64(&videoSent, 1)
			}
			seq++
			ts += 3000
		}
	}()

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			fmt.Printf("sent audio=%s video=%s\n", strconv.FormatUint(atomic.LoadUint64(&audioSent), 10), strconv.FormatUint(atomic.LoadUint64(&videoSent), 10))
		case <-stop:
			return nil
		}
	}
}
