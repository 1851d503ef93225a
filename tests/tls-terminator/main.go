// Command tls-terminator accepts TLS connections on a loopback port and
// relays each one to a plain-TCP backend. The end-to-end tests put it in
// front of the registry for clients that send credentials only over https
// (the go command refuses to send a GOPROXY URL's user information over
// plain http). It makes its own short-lived self-signed certificate for
// 127.0.0.1 and writes it where the test points the client's trust store
// (SSL_CERT_FILE). Test tooling only; built by tests/install-clients.sh.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"os"
	"time"
)

func main() {
	backend := flag.String("backend", "", "host:port of the plain-TCP backend")
	certOut := flag.String("cert-out", "", "file to write the PEM certificate to")
	flag.Parse()
	if *backend == "" || *certOut == "" {
		fmt.Fprintln(os.Stderr, "usage: tls-terminator -backend HOST:PORT -cert-out FILE")
		os.Exit(2)
	}
	certificate, certPEM, err := selfSigned()
	if err != nil {
		log.Fatalf("failed to make a certificate: %v", err)
	}
	if err := os.WriteFile(*certOut, certPEM, 0o644); err != nil {
		log.Fatalf("failed to write %s: %v", *certOut, err)
	}
	config := &tls.Config{Certificates: []tls.Certificate{certificate}, MinVersion: tls.VersionTLS12}
	listener, err := tls.Listen("tcp", "127.0.0.1:0", config)
	if err != nil {
		log.Fatalf("failed to listen: %v", err)
	}
	// The test reads this line to learn the port.
	fmt.Printf("listening on %s\n", listener.Addr())
	for {
		client, err := listener.Accept()
		if err != nil {
			log.Fatalf("failed to accept: %v", err)
		}
		go relay(client, *backend)
	}
}

// relay copies bytes both ways until both sides have finished sending.
func relay(client net.Conn, backend string) {
	defer client.Close()
	server, err := net.Dial("tcp", backend)
	if err != nil {
		log.Printf("failed to reach %s: %v", backend, err)
		return
	}
	defer server.Close()
	done := make(chan struct{}, 2)
	go func() {
		io.Copy(server, client)
		// Pass the client's end of stream on, so the backend can finish.
		server.(*net.TCPConn).CloseWrite()
		done <- struct{}{}
	}()
	go func() {
		io.Copy(client, server)
		client.(*tls.Conn).CloseWrite()
		done <- struct{}{}
	}()
	<-done
	<-done
}

// selfSigned makes a certificate for 127.0.0.1 and localhost, valid for a
// day, that is its own issuer (so it can be the client's only root).
func selfSigned() (tls.Certificate, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	now := time.Now()
	template := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "wharf end-to-end tests"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:              []string{"localhost"},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, certPEM, nil
}
