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

// selfSigned makes a throw-away certificate authority, valid for a day,
// and a server certificate it issues for 127.0.0.1 and localhost; the
// authority's PEM is what clients trust. The two are separate because
// rustls (Wharf's own upstream client) refuses a CA certificate used as
// the server's certificate, as the Web PKI rules say.
func selfSigned() (tls.Certificate, []byte, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	now := time.Now()
	caTemplate := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "wharf end-to-end tests CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTemplate, caTemplate, &caKey.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	template := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "wharf end-to-end tests"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:              []string{"localhost"},
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, template, ca, &key.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	return tls.Certificate{Certificate: [][]byte{der, caDER}, PrivateKey: key}, caPEM, nil
}
