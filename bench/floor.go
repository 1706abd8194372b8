package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// The "echo" role runs in a child process: it dials the address it is
// given and writes back whatever it reads, for processRoundTrip.
func echoMain(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: echo HOST:PORT")
	}
	c, err := net.Dial("tcp", args[0])
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = io.Copy(c, c)
	return err
}

// processRoundTrip measures what one more process in a job's path costs at
// the least: n round trips of 16 bytes over loopback to an echo process,
// each after idle of sleep, as a job one at a time finds the processes it
// crosses asleep. It returns the sorted times.
func processRoundTrip(e *env, n int, idle time.Duration) ([]time.Duration, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	p, err := e.start("echo", false, e.self, "echo", ln.Addr().String())
	if err != nil {
		return nil, err
	}
	defer p.stop(5 * time.Second)
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(10 * time.Second))
	c, err := ln.Accept()
	if err != nil {
		return nil, fmt.Errorf("the echo process did not connect: %v", err)
	}
	defer c.Close()
	msg, back := make([]byte, 16), make([]byte, 16)
	times := make([]time.Duration, 0, n)
	for range n {
		time.Sleep(idle)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		t0 := time.Now()
		if _, err := c.Write(msg); err != nil {
			return nil, err
		}
		if _, err := io.ReadFull(c, back); err != nil {
			return nil, err
		}
		times = append(times, time.Since(t0))
	}
	return sorted(times), nil
}
