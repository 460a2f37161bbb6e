package relay

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/placeos-gnet/dispatch/loop/relay/token"
)

// The token's claims, scopes and signing live in a leaf package, so that
// the token subcommand and test kits need not import the kind.
type Claims = token.Claims

// Scopes a token may carry.
const (
	ScopeRead  = token.ScopeRead
	ScopeWrite = token.ScopeWrite
	ScopeAdmin = token.ScopeAdmin
	ScopeStats = token.ScopeStats
)

// PrefixSession is the one connection type served; practable's "shell" is not.
const PrefixSession = token.PrefixSession

// Reason is why a token or a code was refused: a label of the auth
// failures metric and the "reason" of the JSON error.
type Reason string

const (
	ReasonMissingToken  Reason = "missing_token"
	ReasonMalformed     Reason = "malformed"
	ReasonAlgorithm     Reason = "wrong_algorithm"
	ReasonSignature     Reason = "bad_signature"
	ReasonExpired       Reason = "expired"
	ReasonNotYetValid   Reason = "not_yet_valid"
	ReasonIssuedLater   Reason = "issued_in_future"
	ReasonAudience      Reason = "wrong_audience"
	ReasonMissingClaims Reason = "missing_claims"
	ReasonTopic         Reason = "wrong_topic"
	ReasonPrefix        Reason = "unknown_prefix"
	ReasonScope         Reason = "missing_scope"
	ReasonNoBooking     Reason = "no_booking_id"
	ReasonDenied        Reason = "denied"
	ReasonCode          Reason = "bad_code"
	ReasonCodeExpired   Reason = "code_expired"
)

// reasons lists every Reason, for metrics that exist from the start.
var reasons = []Reason{ReasonMissingToken, ReasonMalformed, ReasonAlgorithm, ReasonSignature, ReasonExpired,
	ReasonNotYetValid, ReasonIssuedLater, ReasonAudience, ReasonMissingClaims, ReasonTopic, ReasonPrefix,
	ReasonScope, ReasonNoBooking, ReasonDenied, ReasonCode, ReasonCodeExpired}

// AuthError is a refused token: why, and what to tell the client.
type AuthError struct {
	Reason  Reason
	Message string
}

func (e *AuthError) Error() string { return e.Message }

func refuse(r Reason, format string, a ...any) *AuthError {
	return &AuthError{Reason: r, Message: fmt.Sprintf(format, a...)}
}

// Verifier checks tokens: HS256/384/512 with the shared secret, and, with a
// public key, the asymmetric algorithm that fits it (RS256/384/512 for RSA,
// ES256/384/512 for its ECDSA curve, EdDSA for Ed25519). It is immutable
// and safe for concurrent use.
type Verifier struct {
	secret   []byte
	public   crypto.PublicKey
	methods  []string
	audience string
}

// NewVerifier builds a verifier for tokens whose aud is audience; at least
// one of secret and public must be given.
func NewVerifier(secret []byte, public crypto.PublicKey, audience string) (*Verifier, error) {
	v := &Verifier{secret: secret, public: public, audience: audience}
	if len(secret) > 0 {
		v.methods = append(v.methods, "HS256", "HS384", "HS512")
	}
	if public != nil {
		algs, err := algorithmsFor(public)
		if err != nil {
			return nil, err
		}
		v.methods = append(v.methods, algs...)
	}
	if len(v.methods) == 0 {
		return nil, errors.New("no relay secret and no public key: tokens cannot be checked")
	}
	return v, nil
}

// Algorithms lists the signing algorithms the verifier accepts.
func (v *Verifier) Algorithms() []string { return slices.Clone(v.methods) }

func algorithmsFor(key crypto.PublicKey) ([]string, error) {
	switch k := key.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return nil, fmt.Errorf("RSA public key of %d bits: at least 2048 are required", k.N.BitLen())
		}
		return []string{"RS256", "RS384", "RS512"}, nil
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return []string{"ES256"}, nil
		case elliptic.P384():
			return []string{"ES384"}, nil
		case elliptic.P521():
			return []string{"ES512"}, nil
		}
		return nil, fmt.Errorf("ECDSA public key on an unsupported curve %s", k.Curve.Params().Name)
	case ed25519.PublicKey:
		return []string{"EdDSA"}, nil
	}
	return nil, fmt.Errorf("unsupported public key type %T", key)
}

// Verify parses and checks a token: signature, exp (required), nbf, iat
// and aud. The claims it returns still need the checks of their use
// (topic, scopes).
func (v *Verifier) Verify(token string, now time.Time) (*Claims, *AuthError) {
	if token == "" {
		return nil, refuse(ReasonMissingToken, "missing token: send it in the Authorization header")
	}
	// jwt reports an algorithm outside the accepted set as a bad
	// signature: look at the header first, to say which it is.
	unverified, _, err := jwt.NewParser().ParseUnverified(token, &Claims{})
	if err != nil && errors.Is(err, jwt.ErrTokenMalformed) {
		return nil, refuse(ReasonMalformed, "token malformed")
	}
	if alg, _ := headerAlg(unverified); !slices.Contains(v.methods, alg) {
		return nil, refuse(ReasonAlgorithm, "token signing method %q not accepted (accepted: %s)", alg, strings.Join(v.methods, ", "))
	}
	claims := &Claims{}
	parser := jwt.NewParser(
		jwt.WithValidMethods(v.methods),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithAudience(v.audience),
		jwt.WithTimeFunc(func() time.Time { return now }),
	)
	_, err = parser.ParseWithClaims(token, claims, v.key)
	switch {
	case err == nil:
		return claims, nil
	case errors.Is(err, jwt.ErrTokenMalformed):
		return nil, refuse(ReasonMalformed, "token malformed")
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return nil, refuse(ReasonSignature, "token signature invalid")
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		return nil, refuse(ReasonAlgorithm, "token signing method not accepted (accepted: %s)", strings.Join(v.methods, ", "))
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return nil, refuse(ReasonMissingClaims, "token missing a required claim (exp, aud)")
	case errors.Is(err, jwt.ErrTokenExpired):
		return nil, refuse(ReasonExpired, "token expired")
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return nil, refuse(ReasonNotYetValid, "token not valid yet")
	case errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return nil, refuse(ReasonIssuedLater, "token issued in the future")
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return nil, refuse(ReasonAudience, "token audience is not this relay's access URL")
	case errors.Is(err, jwt.ErrTokenInvalidClaims):
		return nil, refuse(ReasonMalformed, "token claims malformed")
	}
	return nil, refuse(ReasonMalformed, "token invalid")
}

func headerAlg(t *jwt.Token) (string, bool) {
	if t == nil {
		return "", false
	}
	alg, ok := t.Header["alg"].(string)
	return alg, ok
}

// key picks the key for the token's algorithm; WithValidMethods has
// already refused any other, so an HMAC token never meets the public key.
func (v *Verifier) key(t *jwt.Token) (any, error) {
	switch t.Method.(type) {
	case *jwt.SigningMethodHMAC:
		if len(v.secret) > 0 {
			return v.secret, nil
		}
	case *jwt.SigningMethodRSA, *jwt.SigningMethodECDSA, *jwt.SigningMethodEd25519:
		if v.public != nil {
			return v.public, nil
		}
	}
	return nil, fmt.Errorf("no key for %s", t.Method.Alg())
}

// Mint signs claims (see token.Mint).
func Mint(claims *Claims, key any) (string, error) { return token.Mint(claims, key) }

// ReadPublicKey reads a PEM public key (PKIX "PUBLIC KEY", or PKCS#1 "RSA
// PUBLIC KEY") or a certificate, whose key is taken.
func ReadPublicKey(path string) (crypto.PublicKey, error) {
	block, err := readPEM(path)
	if err != nil {
		return nil, err
	}
	switch block.Type {
	case "PUBLIC KEY":
		return x509.ParsePKIXPublicKey(block.Bytes)
	case "RSA PUBLIC KEY":
		return x509.ParsePKCS1PublicKey(block.Bytes)
	case "CERTIFICATE":
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		return cert.PublicKey, nil
	}
	return nil, fmt.Errorf("%s: PEM block %q is not a public key", path, block.Type)
}

// ReadPrivateKey reads a PEM private key: PKCS#8 "PRIVATE KEY", PKCS#1
// "RSA PRIVATE KEY" or SEC 1 "EC PRIVATE KEY".
func ReadPrivateKey(path string) (any, error) {
	block, err := readPEM(path)
	if err != nil {
		return nil, err
	}
	switch block.Type {
	case "PRIVATE KEY":
		return x509.ParsePKCS8PrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		return x509.ParsePKCS1PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		return x509.ParseECPrivateKey(block.Bytes)
	}
	return nil, fmt.Errorf("%s: PEM block %q is not a private key", path, block.Type)
}

// readPEM reads the first PEM block of a file.
func readPEM(path string) (*pem.Block, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, fmt.Errorf("%s: no PEM block", path)
	}
	return block, nil
}

// BearerToken is the token of an Authorization header: practable's
// clients send the raw JWT, others "Bearer <jwt>".
func BearerToken(header string) string {
	header = strings.TrimSpace(header)
	if len(header) > 7 && strings.EqualFold(header[:7], "Bearer ") {
		return strings.TrimSpace(header[7:])
	}
	return header
}
