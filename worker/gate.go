package worker

import (
	"context"
	"errors"
	"time"
)

// DefaultGateInterval is used when [Config.GateInterval] is zero.
const DefaultGateInterval = 250 * time.Millisecond

// A gate, as [Config.Gate] takes it, says whether the worker may take one
// more job now: nil means yes, an error says why not.

// AllGates returns a gate that is open while every one of gates is; nil
// gates are left out. It asks them in order and stops at the first that is
// closed.
func AllGates(gates ...func(ctx context.Context) error) func(ctx context.Context) error {
	var gs []func(context.Context) error
	for _, g := range gates {
		if g != nil {
			gs = append(gs, g)
		}
	}
	return func(ctx context.Context) error {
		for _, g := range gs {
			if err := g(ctx); err != nil {
				return err
			}
		}
		return nil
	}
}

// errGateTimeout is what a gate that did not answer in time says.
var errGateTimeout = errors.New("gate did not answer in time")

// pollGate asks the Worker's gate, every GateInterval while a slot is
// free, whether one more job may start, and tells the offers. It runs until
// ctx ends.
func (w *Worker) pollGate(ctx context.Context) {
	open := false
	for {
		free, freed := w.offers.free()
		if free <= 0 {
			select {
			case <-freed:
				continue
			case <-ctx.Done():
				return
			}
		}
		gctx, cancel := context.WithTimeout(ctx, max(w.cfg.GateInterval, time.Second))
		err := w.cfg.Gate(gctx)
		if err == nil && gctx.Err() != nil {
			err = errGateTimeout
		}
		cancel()
		if ctx.Err() != nil {
			return
		}
		if (err == nil) != open {
			if err != nil {
				w.log.Debug("gate closed: offering no slot", "reason", err)
			} else {
				w.log.Debug("gate open")
			}
		}
		open = err == nil
		w.offers.setGate(open)
		if !sleepCtx(ctx, w.cfg.GateInterval) {
			return
		}
	}
}
