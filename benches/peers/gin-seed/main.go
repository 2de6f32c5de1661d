// The article's graceful-shutdown pattern for Gin (see ../shared/seeds): ListenAndServe in a
// goroutine, wait for SIGINT/SIGTERM, then srv.Shutdown(ctx) with a 30 s timeout.
// Routes as lameduck-demo: /ping, /work?ms=N. Flag: --listen ADDR. Prints
// "listening http=ADDR" once bound, like the other peers. With --access-log PATH, Gin's
// Logger middleware writes one JSON line per request (method, route, status, latency,
// bytes, client, request id) to PATH, as the article's logging chapter does.
package main

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gin-gonic/gin"
)

func main() {
	addr := "127.0.0.1:8080"
	accessLog := ""
	for i, a := range os.Args {
		if a == "--listen" && i+1 < len(os.Args) {
			addr = os.Args[i+1]
		}
		if a == "--access-log" && i+1 < len(os.Args) {
			accessLog = os.Args[i+1]
		}
	}
	gin.SetMode(gin.ReleaseMode)
	r := gin.New()
	if accessLog != "" {
		f, err := os.OpenFile(accessLog, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			log.Fatalf("access log: %v", err)
		}
		var seq uint64
		r.Use(func(c *gin.Context) {
			n := atomic.AddUint64(&seq, 1)
			c.Set("request_id", fmt.Sprintf("%x-%x", os.Getpid(), n))
			c.Header("X-Request-Id", c.GetString("request_id"))
		})
		r.Use(gin.LoggerWithConfig(gin.LoggerConfig{
			Output: f,
			Formatter: func(p gin.LogFormatterParams) string {
				return fmt.Sprintf("{\"time\":%q,\"method\":%q,\"route\":%q,\"status\":%d,\"latency_ms\":%f,\"bytes\":%d,\"client\":%q,\"request_id\":%q}\n",
					p.TimeStamp.Format(time.RFC3339Nano), p.Method, p.Path, p.StatusCode,
					float64(p.Latency.Microseconds())/1000, p.BodySize, p.ClientIP, p.Keys["request_id"])
			},
		}))
	}
	r.GET("/ping", func(c *gin.Context) { c.String(http.StatusOK, "pong") })
	r.GET("/work", func(c *gin.Context) {
		ms, err := strconv.Atoi(c.Query("ms"))
		if err != nil || ms < 0 || ms > 600000 {
			c.String(http.StatusBadRequest, "bad ms")
			return
		}
		time.Sleep(time.Duration(ms) * time.Millisecond)
		c.String(http.StatusOK, "done")
	})

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		log.Fatalf("listen: %v", err)
	}
	fmt.Printf("listening http=%s\n", ln.Addr())
	srv := &http.Server{Handler: r}
	go func() {
		if err := srv.Serve(ln); err != nil && err != http.ErrServerClosed {
			log.Fatalf("Server failed: %v", err)
		}
	}()

	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGINT, syscall.SIGTERM)
	<-c

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		log.Printf("Server shutdown error: %v", err)
	}
}
