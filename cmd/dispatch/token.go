package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/placeos-gnet/dispatch/loop/relay"
)

// tokenSetting is one flag of the token subcommand, with the variable
// practable's `relay token` reads for it.
type tokenSetting struct {
	long, envName, def, usage string
}

var tokenSettings = []tokenSetting{
	{"audience", "RELAY_TOKEN_AUDIENCE", "", "the relay's access base URL (--relay-access-url); required"},
	{"topic", "RELAY_TOKEN_TOPIC", "", "the topic (a relay topic, or kind:channel to watch one); required for read or write"},
	{"scopes", "RELAY_TOKEN_SCOPES", "read,write", "comma-separated scopes: read, write, relay:admin, relay:stats, or others"},
	{"lifetime", "RELAY_TOKEN_LIFETIME", "3600", "seconds (or a duration such as 90m) until the token expires"},
	{"not-before", "RELAY_TOKEN_NOT_BEFORE", "0", "seconds (or a duration) from now until the token becomes valid"},
	{"booking-id", "RELAY_TOKEN_BOOKING_ID", "relay-token-cli", "booking_id claim: deny-listing it cancels the token's connections"},
	{"prefix", "RELAY_TOKEN_CONNECTION_TYPE", relay.PrefixSession, "prefix claim (connection type)"},
	{"private-key", "RELAY_TOKEN_PRIVATE_KEY", "", "PEM private key file: sign RS256, ES256/384/512 or EdDSA instead of HS256 with the secret"},
}

// runToken mints a relay token and prints it: `dispatch token --topic T
// --audience URL`. The HS256 secret comes from the environment only
// (RELAY_TOKEN_SECRET, else DISPATCH_RELAY_SECRET, else RELAY_SECRET), so
// that it never shows in a process listing.
func runToken(args []string, e env, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("dispatch token", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	values := map[string]*string{}
	for _, s := range tokenSettings {
		v := s.def
		if ev, ok := e.get(s.envName); ok && ev != "" {
			v = ev
		}
		values[s.long] = &v
		fs.StringVar(values[s.long], s.long, v, s.usage)
	}
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		tokenUsage(stdout)
		return 0
	}
	if err == nil && fs.NArg() > 0 {
		err = fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	var token string
	if err == nil {
		token, err = mintToken(values, e, time.Now())
	}
	if err != nil {
		fmt.Fprintln(stderr, "dispatch token:", err)
		fmt.Fprintln(stderr, "Run 'dispatch token -h' for the flags.")
		return 2
	}
	fmt.Fprintln(stdout, token)
	return 0
}

func mintToken(v map[string]*string, e env, now time.Time) (string, error) {
	lifetime, err := secondsOrDuration(*v["lifetime"])
	if err != nil || lifetime <= 0 {
		return "", fmt.Errorf("--lifetime (RELAY_TOKEN_LIFETIME): want a positive number of seconds or a duration, got %q", *v["lifetime"])
	}
	notBefore, err := secondsOrDuration(*v["not-before"])
	if err != nil {
		return "", fmt.Errorf("--not-before (RELAY_TOKEN_NOT_BEFORE): want seconds or a duration, got %q", *v["not-before"])
	}
	var scopes []string
	for _, s := range strings.Split(*v["scopes"], ",") {
		if s = strings.TrimSpace(s); s != "" {
			scopes = append(scopes, s)
		}
	}
	claims := &relay.Claims{Topic: *v["topic"], Prefix: *v["prefix"], Scopes: scopes, BookingID: *v["booking-id"],
		RegisteredClaims: jwt.RegisteredClaims{
			Audience:  jwt.ClaimStrings{*v["audience"]},
			IssuedAt:  jwt.NewNumericDate(now),
			NotBefore: jwt.NewNumericDate(now.Add(notBefore)),
			ExpiresAt: jwt.NewNumericDate(now.Add(lifetime)),
		}}
	switch {
	case *v["audience"] == "":
		return "", errors.New("--audience (RELAY_TOKEN_AUDIENCE) is required: the relay's access base URL")
	case len(scopes) == 0:
		return "", errors.New("--scopes (RELAY_TOKEN_SCOPES): no scope given")
	case claims.Topic == "" && (claims.Has(relay.ScopeRead) || claims.Has(relay.ScopeWrite)):
		return "", errors.New("--topic (RELAY_TOKEN_TOPIC) is required for the read or write scope")
	}
	if claims.Topic != "" {
		if _, err := relay.ParseTopic(claims.Topic); err != nil {
			return "", fmt.Errorf("--topic (RELAY_TOKEN_TOPIC): %w", err)
		}
	}
	if path := *v["private-key"]; path != "" {
		key, err := relay.ReadPrivateKey(path)
		if err != nil {
			return "", fmt.Errorf("--private-key (RELAY_TOKEN_PRIVATE_KEY): %w", err)
		}
		return relay.Mint(claims, key)
	}
	for _, name := range []string{"RELAY_TOKEN_SECRET", "DISPATCH_RELAY_SECRET", "RELAY_SECRET"} {
		if s, ok := e.get(name); ok && s != "" {
			return relay.Mint(claims, []byte(s))
		}
	}
	return "", errors.New("no secret: set RELAY_TOKEN_SECRET (or DISPATCH_RELAY_SECRET, RELAY_SECRET), or give --private-key")
}

// secondsOrDuration reads practable's seconds, or a Go duration.
func secondsOrDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return time.Duration(n) * time.Second, nil
	}
	return time.ParseDuration(s)
}

func tokenUsage(w io.Writer) {
	fmt.Fprintf(w, "Usage: dispatch token [flags]\n\nMints a relay token (a JWT) and prints it, like practable's `relay token`.\n\nFlags (each falls back to its environment variable, then the default):\n")
	for _, s := range tokenSettings {
		fmt.Fprintf(w, "  --%-14s %-28s default %-18q %s\n", s.long, s.envName, s.def, s.usage)
	}
	fmt.Fprintf(w, "\nEnvironment only:\n"+
		"  RELAY_TOKEN_SECRET, else DISPATCH_RELAY_SECRET, else RELAY_SECRET   HS256 secret (unless --private-key)\n")
}
